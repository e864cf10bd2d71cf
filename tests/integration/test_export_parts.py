"""`cvtasks export` of the detector (one graph, run image by image) and the captioner (encoder and
decoder step, decoded in Python): parity with the PyTorch model on sample images, the files and
config written, and what runs the export (models/export_detection.py, models/export_captioning.py)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from models import checkpoints, export
from models.captioning import CAPTIONING, caption_batch
from models.detection import DETECTION, predict
from models.export import EXPORTABLE, MINIMUMS, TOLERANCES, ExportError, export_model, load_export
from models.export_captioning import ExportedCaptioner
from models.export_detection import ExportedDetector, detect
from models.options import CaptionOptions, DetectOptions
from models.preprocessing import read_image
from services.cli import main

SUFFIX = {"onnx": "onnx", "torchscript": "ts"}


def _test_images(shapes_dir, count):
    return [read_image(p) for p in sorted((shapes_dir / "images" / "test").iterdir())[:count]]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_detector_export_finds_the_same_boxes_as_its_model(detector_store, shapes_dir, tmp_path, fmt):
    folder, parity = export_model(detector_store / "tiny-detector", fmt, tmp_path / "out")
    # checked on the default samples (synthetic scenes of three sizes), over every box returned
    assert parity["boxes_compared"] >= 5 and parity["unmatched_boxes"] == parity["label_disagreements"] == 0
    assert parity["max_box_diff_px"] <= TOLERANCES["max_box_diff_px"]
    assert parity["max_score_diff"] <= TOLERANCES["max_score_diff"]
    record = json.loads((folder / "config.json").read_text())["extra"]["export"]
    assert record["parts"]["model"]["inputs"] == ["image"] and record["file"] == f"model.{SUFFIX[fmt]}"
    assert record["parts"]["model"]["outputs"] == ["boxes", "scores", "labels"]
    assert (record["min_size"], record["max_size"]) == (128, 128) and record["tolerances"]["max_box_diff_px"] == 0.05
    assert (folder / f"model.{SUFFIX[fmt]}").is_file() and (folder / "model.safetensors").is_file()

    model, config = checkpoints.load_model(folder)  # still a model-store folder
    loaded, exported = load_export(folder)
    assert isinstance(exported, ExportedDetector) and loaded.task == "detection"
    # images the check did not see: a batch of test images (run image by image), and one so wide
    # that fit_for_model shrinks and pads it first
    rgb = _test_images(shapes_dir, 6)
    wide = torch.cat([DETECTION.model_input(x, config) for x in rgb[:5]], dim=2)  # 128 x 640
    options = DetectOptions(score_threshold=0.05)
    for images in ([DETECTION.model_input(x, config) for x in rgb], [wide]):
        ours = predict(model.eval(), images, class_names=config.classes, options=options)
        theirs = detect(exported, images, class_names=config.classes, options=options)
        assert all(len(found) >= 1 for found in ours)
        for a, b in zip(ours, theirs):
            assert [d.label for d in a] == [d.label for d in b]
            for x, y in zip(a, b):
                assert max(abs(p - q) for p, q in zip(x.box, y.box)) <= TOLERANCES["max_box_diff_px"]
                assert abs(x.score - y.score) <= TOLERANCES["max_score_diff"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_captioner_export_decodes_the_same_captions_greedy_and_by_beam_search(
    captioner_store, shapes_dir, tmp_path, fmt
):
    folder, parity = export_model(captioner_store / "tiny-captioner", fmt, tmp_path / "out")
    assert parity["caption_disagreement"] == 0.0 and parity["max_log_prob_diff"] <= TOLERANCES["max_log_prob_diff"]
    record = json.loads((folder / "config.json").read_text())["extra"]["export"]
    assert set(record["parts"]) == {"encoder", "step"} and "file" not in record
    assert record["parts"]["step"]["inputs"] == ["tokens", "h", "c"]
    assert record["parts"]["step"]["outputs"] == ["log_probs", "h_next", "c_next"]
    assert (folder / f"encoder.{SUFFIX[fmt]}").is_file() and (folder / f"step.{SUFFIX[fmt]}").is_file()

    model, config = checkpoints.load_model(folder)
    _, exported = load_export(folder)
    assert isinstance(exported, ExportedCaptioner)
    # a batch of 5 the check did not see, each image with its own options: greedy and beam search
    images = torch.stack([CAPTIONING.model_input(x, config) for x in _test_images(shapes_dir, 5)])
    options = [CaptionOptions(beam_size=1, max_length=12)] * 2 + [
        CaptionOptions(beam_size=3, max_length=12, num_captions=2)
    ] * 3
    ours, theirs = caption_batch(model.eval(), images, options), caption_batch(exported, images, options)
    assert [[c.tokens for c in cs] for cs in ours] == [[c.tokens for c in cs] for cs in theirs]
    for a, b in zip(ours, theirs):
        assert all(abs(x.log_prob - y.log_prob) <= TOLERANCES["max_log_prob_diff"] for x, y in zip(a, b))


def _shift_boxes(run):
    return lambda image: (lambda boxes, scores, labels: (boxes + 1.0, scores, labels))(*run(image))


def _flip_words(run):
    return lambda tokens, h, c: (lambda lp, h2, c2: (lp.flip(-1), h2, c2))(*run(tokens, h, c))


def test_a_detector_export_that_disagrees_is_refused_by_the_command_and_removed(
    detector_store, tmp_path, monkeypatch, capsys
):
    real = export.load_runner
    monkeypatch.setattr("models.export.load_runner", lambda path, fmt: _shift_boxes(real(path, fmt)))
    out = tmp_path / "out"
    argv = ["export", "tiny-detector", "--model-store", str(detector_store), "--format", "onnx", "--out", str(out)]
    assert main(argv) == 1
    assert re.search(r"refused: the export disagrees .*max_box_diff_px [0-9.]+ > 0.05", capsys.readouterr().err)
    assert not (out / "model.onnx").exists() and not (out / "config.json").exists()


def test_a_captioner_export_that_decodes_other_words_is_refused_and_removed(captioner_store, tmp_path, monkeypatch):
    real = export.load_runner
    wrong = {"step.ts": _flip_words}  # the encoder is right, the step's word scores are reversed
    monkeypatch.setattr(
        "models.export.load_runner", lambda path, fmt: wrong.get(path.name, lambda r: r)(real(path, fmt))
    )
    with pytest.raises(ExportError, match="caption_disagreement 1 > 0"):
        export_model(captioner_store / "tiny-captioner", "torchscript", tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_a_detector_check_that_compared_no_box_is_refused(detector_store):
    model, config = checkpoints.load_model(detector_store / "tiny-detector")
    runners = {"model": lambda image: (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))}
    assert MINIMUMS["boxes_compared"][0] == 1
    with pytest.raises(ExportError, match=r"could not be checked: boxes_compared 0 < 1: .*\(--samples DIR\)"):
        EXPORTABLE["detection"].check(model.eval(), runners, config, [])
