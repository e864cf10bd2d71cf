"""Per-class COCO AP (`cvtasks eval detection` reports it beside the totals)."""

from __future__ import annotations

import pytest

from models.evaluation import coco_class_metrics, coco_detection_metrics, coco_from_dict


def _ground_truth():
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2)]
    boxes = [(1, 1, [10, 10, 30, 30]), (2, 1, [50, 50, 20, 20]), (1, 2, [60, 10, 25, 25]), (2, 2, [5, 60, 30, 30])]
    annotations = [
        {"id": n, "image_id": image, "category_id": category, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
        for n, (image, category, box) in enumerate(boxes, start=1)
    ]
    categories = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    return coco_from_dict({"images": images, "annotations": annotations, "categories": categories})


def test_each_class_gets_its_own_ap():
    gt = _ground_truth()
    circles = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in gt.loadAnns([1, 2])
    ]
    # one square found exactly, the other missed; a false square where the first circle is
    squares = [
        {"image_id": 1, "category_id": 2, "bbox": [60, 10, 25, 25], "score": 0.8},
        {"image_id": 1, "category_id": 2, "bbox": [10, 10, 30, 30], "score": 0.95},
    ]
    per_class = coco_class_metrics(gt, circles + squares)
    assert set(per_class) == {"circle", "square"}
    assert per_class["circle"]["AP"] == pytest.approx(1.0) and per_class["circle"]["AP50"] == pytest.approx(1.0)
    # squares: the best-scored is wrong, then one of two right -> precision 1/2 up to recall 1/2
    assert per_class["square"]["AP50"] == pytest.approx(0.5 * 51 / 101, abs=0.01)
    totals = coco_detection_metrics(gt, circles + squares)
    mean_of_classes = (per_class["circle"]["AP50"] + per_class["square"]["AP50"]) / 2
    assert totals["AP50"] == pytest.approx(mean_of_classes, abs=1e-6)  # COCO's total is the mean over classes


def test_a_class_without_detections_scores_zero():
    gt = _ground_truth()
    circles = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9}]
    per_class = coco_class_metrics(gt, circles)
    assert per_class["square"] == {"AP": 0.0, "AP50": 0.0}
    assert 0.0 < per_class["circle"]["AP50"] < 1.0  # one of two circles found
    assert coco_class_metrics(gt, []) == {"circle": {"AP": 0.0, "AP50": 0.0}, "square": {"AP": 0.0, "AP50": 0.0}}
