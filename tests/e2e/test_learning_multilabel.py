"""Multi-label classification is real: a tiny classifier trained multi-label (sigmoid + BCE) on
the synthetic variant with 1..3 shapes per image reaches a held-out mean AP, counted from the
service's answers over gRPC, and the service answers with every label over the threshold. Slow
(~4 min on 2 busy cores)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models import checkpoints
from models.class_datasets import csv_labels
from models.evaluation import MultiLabelReport
from models.synth import generate_classification
from models.train.classification import ClassificationTrainConfig, train_classification
from services.client import CvtasksClient
from services.launch import running_server

SPLITS = {"train": 600, "val": 60, "test": 100}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_multi_label_classifier_learns_and_serves_every_label_over_the_threshold(tmp_path, capsys):
    data = tmp_path / "data"
    generate_classification(data, splits=SPLITS, image_size=64, seed=0, multi_label=True)
    started = time.perf_counter()
    result = train_classification(
        ClassificationTrainConfig(
            train_images=str(data / "images" / "train"),
            train_labels=str(data / "labels" / "train.csv"),
            val_images=str(data / "images" / "val"),
            val_labels=str(data / "labels" / "val.csv"),
            multi_label=True,
            run_dir=str(tmp_path / "run"),
            model_store=str(tmp_path / "store"),
            name="multi",
            architecture="classifier_tiny",
            model_args={"widths": [16, 32, 64]},
            image_size=64,
            epochs=8,
            batch_size=32,
            lr=3e-3,
            warmup_steps=10,
            augment=False,
            progress=False,
        )
    )
    seconds = time.perf_counter() - started
    assert checkpoints.load_config(result.model_dir).extra["multi_label"] is True
    classes, items = csv_labels(data / "labels" / "test.csv", data / "images" / "test", multi_label=True)
    truth = np.zeros((len(items), len(classes)))
    for row, (_, ids) in zip(truth, items):
        row[list(ids)] = 1
    with running_server(task="classification", model_store=tmp_path / "store") as address:
        with CvtasksClient(address, timeout=120) as client:
            every = list(client.classify_stream((p.read_bytes() for p, _ in items), threshold=0.0, timeout=300))
            over = list(client.classify_stream((p.read_bytes() for p, _ in items), timeout=300))  # default 0.5
    probs = np.zeros_like(truth)
    for row, response in zip(probs, every):
        assert len(response.classes) == len(classes)  # threshold 0: every label, whatever top_k says
        for c in response.classes:
            row[c.label] = c.probability
    for response, row in zip(over, probs):  # the default threshold keeps exactly the labels >= 0.5
        assert sorted(c.label for c in response.classes) == [i for i, p in enumerate(row) if p >= 0.5]
    report = MultiLabelReport.of(probs, truth, classes, 0.5)
    with capsys.disabled():
        print(
            f"\nmulti-label classifier over gRPC on {len(items)} held-out images: {report.headline} "
            f"(val mAP {result.metrics['mAP']:.3f}); trained in {seconds:.0f} s"
        )
    assert report.mean_ap >= 0.9 and report.macro_f1 >= 0.8
