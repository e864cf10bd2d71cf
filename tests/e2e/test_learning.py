"""Learning is real: the quickstart recipe reaches COCO AP50 >= 0.80 on a held-out split. Slow (~5 min)."""

from __future__ import annotations

import json
import time

import pytest

from models import checkpoints
from models.datasets import CocoDetectionDataset
from models.evaluation import coco_from_dict, evaluate_detector
from models.synth import generate_shapes
from models.train.detection import QUICKSTART_SPLITS, quickstart_config, train_detection


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quickstart_detector_reaches_ap50_on_held_out_images(tmp_path, capsys):
    data = tmp_path / "data"
    generate_shapes(data, splits=QUICKSTART_SPLITS, image_size=128, seed=0)
    started = time.perf_counter()
    result = train_detection(quickstart_config(data, tmp_path, progress=False))
    minutes = (time.perf_counter() - started) / 60

    model, config = checkpoints.load_model(result.model_dir)
    test = CocoDetectionDataset(data / "images" / "test", data / "annotations" / "test.json")
    gt = coco_from_dict(json.loads((data / "annotations" / "test.json").read_text()))
    metrics = evaluate_detector(model, test, gt=gt, label_to_category=test.label_to_category, progress=False)
    with capsys.disabled():
        print(
            f"\nquickstart detector: held-out test AP50 {metrics['AP50']:.3f}, AP {metrics['AP']:.3f}, "
            f"trained in {minutes:.1f} min"
        )
    assert len(test) == QUICKSTART_SPLITS["test"]
    assert metrics["AP50"] >= 0.80
