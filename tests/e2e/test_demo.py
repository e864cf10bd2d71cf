"""`cvtasks demo` wiring, end to end with every recipe shrunk to one short epoch on a few
images: all five models trained, served on one port, queried over gRPC, outputs written.
(The recipes themselves are what the slow learning tests check.)"""

from __future__ import annotations

import argparse
import json

from models.train import captioning, classification, detection, generation, segmentation
from services.commands import demo


def _shrunk(recipe, **small):
    return lambda *args, **kwargs: recipe(*args, **{**kwargs, "progress": False, **small})


def test_demo_trains_serves_and_writes_every_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(detection, "QUICKSTART_SPLITS", {"train": 12, "val": 4, "test": 6})
    monkeypatch.setattr(detection, "quickstart_config", _shrunk(detection.quickstart_config, epochs=1))
    monkeypatch.setattr(segmentation, "quickstart_config", _shrunk(segmentation.quickstart_config, epochs=1))
    monkeypatch.setattr(captioning, "quickstart_config", _shrunk(captioning.quickstart_config, epochs=1))
    monkeypatch.setattr(
        generation, "QUICKSTART_DATA", {**generation.QUICKSTART_DATA, "splits": {"train": 48, "test": 24}}
    )
    monkeypatch.setattr(generation, "quickstart_config", _shrunk(generation.quickstart_config, epochs=1))
    monkeypatch.setattr(classification, "QUICKSTART_SPLITS", {"train": 12, "val": 6, "test": 9})
    monkeypatch.setattr(classification, "quickstart_config", _shrunk(classification.quickstart_config, epochs=1))

    assert demo.run(argparse.Namespace(out=str(tmp_path), seed=0)) == 0

    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.rindex("\n{\n") + 1 :])  # the summary is printed last
    assert set(summary) == {"detection", "segmentation", "captioning", "generation", "classification"}
    assert summary["classification"]["held_out_images"] == 9
    assert 0.0 <= summary["classification"]["held_out_top1_from_the_service"] <= 1.0
    assert summary["generation"]["samples_from_the_service"] == 512
    assert summary["generation"]["untrained_baseline_frechet_distance"] > 0
    for name in (
        "detections.json",
        "segmentation_metrics.json",
        "captions.json",
        "segmentation_examples.png",
        "captioning_examples.png",
        "generated_samples.png",
        "classifications.json",
        "classification_examples.png",
        "run-generator/losses.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert len(json.loads((tmp_path / "captions.json").read_text())) == 6
    assert len(list((tmp_path / "annotated").iterdir())) == 6
    models = ("quickstart-detector", "quickstart-unet", "quickstart-captioner", "quickstart-generator")
    for model in (*models, "quickstart-classifier"):
        assert (tmp_path / "model_store" / model / "config.json").is_file(), model
