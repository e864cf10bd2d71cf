"""A Faster R-CNN detector as one exported graph, run image by image (models/export.py writes it).

What is exported (``model.onnx`` / ``model.ts``, TorchScript by ``torch.jit.script``: tracing
keeps only the example's path through the data-dependent loops): ``image`` (3, h, w) float in
[0, 1] at the model's size -> ``boxes`` (N, 4) float (x1, y1, x2, y2) in those pixels,
``scores`` (N,) and ``labels`` (N,) int64 (0 is background, as torchvision), best first, at most
``box_detections_per_img``, scores over the model's ``box_score_thresh``. Normalisation, the
RPN, RoI heads and NMS are in the graph; h and w are dynamic.

What stays in Python (``ExportedDetector``, about a dozen lines of torch): the resize to the
model's size and the boxes' scale back to the image's pixels. torchvision's transform computes
that scale in float32 when scripted or traced and in float64 when eager, so the graph would
resize about half of all image sides one pixel short of what the eager model does (200 px ->
127 instead of 128, with scores off by 0.01 or more); done in Python, it is eager's own sum.
Also in Python, as for the eager model (detection.predict_with): fit_for_model's shrink of
extreme aspect ratios, the score threshold, the class filter and max_detections.

One image per call, no batch axis: torchvision's detector takes a list of images and loops over
it in Python (the transform, the RPN's and RoI heads' per-image selection), so a traced graph
has as many image inputs as its example had, fixed; a dynamic batch cannot be had from that
code. ``ExportedDetector`` runs a batch as a loop over its images. The eager model pads a batch
to its largest image, so its boxes for a batch of mixed sizes may differ from those of each
image alone by what the padding changes at the border; parity is measured image by image.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import box_iou

from models.detection import DETECTION, Detection, predict_with
from models.options import DetectOptions
from models.task import device_of

INPUTS, OUTPUTS = ("image",), ("boxes", "scores", "labels")
DYNAMIC = {"image": {1: "height", 2: "width"}, "boxes": {0: "boxes"}, "scores": {0: "boxes"}, "labels": {0: "boxes"}}
FIGURES = ("unmatched_boxes", "label_disagreements", "max_box_diff_px", "max_score_diff", "boxes_compared")
SUMMED = ("unmatched_boxes", "label_disagreements", "boxes_compared")  # counts over the images; the rest: the worst


class _Prescaled(GeneralizedRCNNTransform):
    """torchvision's transform less its resize: the graph's input is at the model's size already."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


class DetectorGraph(nn.Module):
    """The exported part: ``image`` (3, h, w) at the model's size -> (boxes, scores, labels).
    Shares the stored model's backbone and heads (no copy)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        t = model.transform
        transform = _Prescaled(t.min_size, t.max_size, t.image_mean, t.image_std, t.size_divisible, t.fixed_size)
        self.rcnn = GeneralizedRCNN(model.backbone, model.rpn, model.roi_heads, transform)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if torch.jit.is_scripting():  # scripted, torchvision answers (losses, detections)
            _, found = self.rcnn([image])
        else:
            found = self.rcnn([image])
        return found[0]["boxes"], found[0]["scores"], found[0]["labels"]


def sizes_of(model: nn.Module) -> dict[str, int]:
    """The sizes the Python side needs, recorded in the export's config: min_size, max_size."""
    if model.transform.fixed_size is not None:  # no builder here sets one; model_sized would not honour it
        raise ValueError("a detector whose transform has a fixed_size cannot be exported (model_sized ignores it)")
    return {"min_size": int(model.transform.min_size[-1]), "max_size": int(model.transform.max_size)}


def example(model: nn.Module, config: Any) -> tuple[Tensor, ...]:
    side = sizes_of(model)["min_size"]
    return (torch.rand(3, side, side, generator=torch.Generator().manual_seed(0)),)


def model_sized(image: Tensor, *, min_size: int, max_size: int) -> Tensor:
    """(3, H, W) -> resized as torchvision's transform resizes in eager mode: by one scale, the
    short side to ``min_size`` unless the long side would pass ``max_size`` (float64, bilinear)."""
    height, width = image.shape[-2:]
    scale = min(min_size / min(height, width), max_size / max(height, width))
    sized = F.interpolate(
        image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )
    return sized[0]


class ExportedDetector:
    """A detector export called as the torchvision model is: a list of float (3, H, W) images in
    [0, 1] -> one dict per image (boxes in its pixels, scores, labels), image by image.
    ``run``: the graph (export.load_runner)."""

    def __init__(self, run: Callable[..., Any], *, min_size: int, max_size: int) -> None:
        self.run, self.min_size, self.max_size = run, min_size, max_size

    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        found = []
        for image in images:
            sized = model_sized(image, min_size=self.min_size, max_size=self.max_size)
            with warnings.catch_warnings():  # the scripted model's note that it returns (losses, detections)
                warnings.filterwarnings("ignore", "RCNN always returns", UserWarning)
                boxes, scores, labels = self.run(sized)
            boxes = resize_boxes(boxes, list(sized.shape[-2:]), list(image.shape[-2:]))
            found.append({"boxes": boxes, "scores": scores, "labels": labels})
        return found


def assemble(runners: dict[str, Callable[..., Any]], record: dict[str, Any]) -> ExportedDetector:
    return ExportedDetector(runners["model"], min_size=record["min_size"], max_size=record["max_size"])


def detect(
    exported: ExportedDetector,
    images: Sequence[Tensor],
    *,
    class_names: Sequence[str],
    options: Sequence[DetectOptions] | DetectOptions = DetectOptions(),
) -> list[list[Detection]]:
    """detection.predict with the export: one list of Detections per image, in its pixels."""
    return predict_with(exported, images, max_size=exported.max_size, class_names=class_names, options=options)


def _pairs(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (i, j) of boxes at IoU > 0.5, a box of the same label first (the
    model returns a box per class for one object), then the highest IoU."""
    if not len(ours["boxes"]) or not len(theirs["boxes"]):
        return []
    iou = box_iou(ours["boxes"], theirs["boxes"])
    rank = torch.where(iou > 0.5, iou + (ours["labels"][:, None] == theirs["labels"][None, :]).float(), -1.0)
    pairs = []
    while float(rank.max()) > 0:
        i, j = divmod(int(rank.argmax()), rank.shape[1])
        pairs.append((i, j))
        rank[i, :], rank[:, j] = -1.0, -1.0
    return pairs


def agreement(
    ours: dict[str, Tensor], theirs: dict[str, Tensor], *, threshold: float, band: float, cap: int | None = None
) -> dict[str, float]:
    """Two detectors' outputs for one image, over the boxes scoring at least ``threshold``:

    ``unmatched_boxes`` a box of one with no box of the other at IoU > 0.5 (the count differs);
    ``label_disagreements`` paired boxes of different labels; ``max_box_diff_px`` and
    ``max_score_diff`` over the pairs; ``boxes_compared`` the pairs. A box within ``band`` of
    the threshold may be on either side of it in the other: it is paired if it can be, never
    counted as unmatched. ``cap``: the most boxes the model keeps (``box_detections_per_img``);
    a list that many long was cut at its lowest score, a second threshold with the same band
    (a random-weight model's boxes all score within 1e-4 of each other, so that cut is a tie)."""
    keep_o, keep_t = ours["scores"] >= threshold - band, theirs["scores"] >= threshold - band
    o = {k: v[keep_o] for k, v in ours.items()}
    t = {k: v[keep_t] for k, v in theirs.items()}
    pairs = [(i, j) for i, j in _pairs(o, t) if max(o["scores"][i], t["scores"][j]) >= threshold]
    paired_o, paired_t = {i for i, _ in pairs}, {j for _, j in pairs}
    cuts = [float(x["scores"].min()) for x in (ours, theirs) if cap is not None and len(x["scores"]) >= cap]
    sure = max([threshold, *cuts]) + band
    sure_o = [i for i in range(len(o["scores"])) if o["scores"][i] >= sure and i not in paired_o]
    sure_t = [j for j in range(len(t["scores"])) if t["scores"][j] >= sure and j not in paired_t]
    figures = {
        "unmatched_boxes": float(len(sure_o) + len(sure_t)),
        "label_disagreements": float(sum(int(o["labels"][i] != t["labels"][j]) for i, j in pairs)),
        "max_box_diff_px": max((float((o["boxes"][i] - t["boxes"][j]).abs().max()) for i, j in pairs), default=0.0),
        "max_score_diff": max((float((o["scores"][i] - t["scores"][j]).abs()) for i, j in pairs), default=0.0),
    }
    return {**figures, "boxes_compared": float(len(pairs))}


def figures(
    model: nn.Module,
    runners: dict[str, Callable[..., Any]],
    config: Any,
    samples: Sequence[np.ndarray],
    *,
    band: float,
) -> dict[str, float]:
    """The agreement over the sample images (RGB uint8), eager model vs export, each image alone,
    over every box the model returns (scores over its ``box_score_thresh``, 0.05 for torchvision's
    builders), so whatever score threshold a request sets is covered; counts summed, the rest
    the worst. The images go to the model's device (the runners take them from there)."""
    exported, threshold = assemble(runners, sizes_of(model)), float(model.roi_heads.score_thresh)
    cap = int(model.roi_heads.detections_per_img)
    worst = dict.fromkeys(FIGURES, 0.0)
    for rgb in samples:
        image = DETECTION.model_input(rgb, config).to(device_of(model))
        with torch.no_grad():
            ours, theirs = model([image])[0], exported([image])[0]
        for key, value in agreement(ours, theirs, threshold=threshold, band=band, cap=cap).items():
            worst[key] = worst[key] + value if key in SUMMED else max(worst[key], value)
    return worst
