"""Learning is real: the quickstart classifier, served over gRPC, reaches held-out top-1 >= 0.95
on the synthetic classification data, counted from the service's answers. Slow (~2-3 min)."""

from __future__ import annotations

import time

import pytest

from models.class_datasets import image_folder
from models.synth import generate_classification
from models.train.classification import QUICKSTART_SPLITS, quickstart_config, train_classification
from services.client import CvtasksClient
from services.launch import running_server


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_classifier_reaches_top1_on_held_out_images_over_grpc(tmp_path, capsys):
    data = tmp_path / "data"
    generate_classification(data, splits=QUICKSTART_SPLITS, image_size=128, seed=0)
    started = time.perf_counter()
    result = train_classification(quickstart_config(data, tmp_path, progress=False))
    minutes = (time.perf_counter() - started) / 60
    classes, items = image_folder(data / "images" / "test")
    with running_server(task="classification", model_store=tmp_path / "model_store") as address:
        with CvtasksClient(address, timeout=120) as client:
            responses = list(client.classify_stream((path.read_bytes() for path, _ in items), timeout=300, top_k=1))
    assert len(responses) == len(items) == QUICKSTART_SPLITS["test"]
    assert not any(r.HasField("error") for r in responses)
    correct = sum(r.classes[0].class_name == classes[label] for r, (_, label) in zip(responses, items))
    top1 = correct / len(items)
    with capsys.disabled():
        print(
            f"\nquickstart classifier: held-out top-1 over gRPC {top1:.3f} ({correct}/{len(items)}), "
            f"val top-1 {result.metrics['top1']:.3f}, trained in {minutes:.1f} min"
        )
    assert top1 >= 0.95
