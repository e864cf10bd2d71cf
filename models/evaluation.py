"""Evaluation metrics. Detection: pycocotools COCOeval (AP@[.5:.95], AP50, AP75)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


def coco_from_dict(dataset: Mapping[str, Any]) -> COCO:
    """A pycocotools COCO index over an in-memory COCO JSON dict (no prints)."""
    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_detection_metrics(gt: COCO, results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """COCOeval bbox metrics for ``results`` (COCO results format: image_id, category_id, bbox xywh, score).

    Returns ``{"AP": AP@[.5:.95], "AP50": ..., "AP75": ...}``; all 0.0 when there are no results.
    """
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(list(results))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = sorted(gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # A metric with no ground truth at all is -1 in COCOeval; report 0 instead.
    return {k: max(0.0, float(ev.stats[i])) for k, i in (("AP", 0), ("AP50", 1), ("AP75", 2))}


def detection_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_category: Mapping[int, int],
) -> list[dict[str, Any]]:
    """torchvision outputs (boxes xyxy) -> COCO results rows (bbox xywh, category ids)."""
    rows = []
    for out, image_id in zip(outputs, image_ids):
        for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            x1, y1, x2, y2 = box
            rows.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_category[int(label)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return rows


def evaluate_detector(
    model: nn.Module,
    dataset: Dataset,
    *,
    gt: COCO,
    label_to_category: Mapping[int, int],
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, float]:
    """Run ``model`` over ``dataset`` (items: image tensor, target with "image_id") and COCO-evaluate it."""
    from models.datasets import collate_detection

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_detection)
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc="eval", leave=False, disable=None if progress else True):
            outputs = model([im.to(device) for im in images])
            outputs = [{k: v.cpu() for k, v in o.items()} for o in outputs]
            rows += detection_results(outputs, [int(t["image_id"]) for t in targets], label_to_category)
    model.train(was_training)
    return coco_detection_metrics(gt, rows)
