"""Faster R-CNN detectors: a registry of builders, local weights, and predict -> dataclasses.

Box format everywhere: ``(x1, y1, x2, y2)`` in pixels of the input image (pascal_voc).
Labels follow torchvision: ``0`` is background, ``1..K`` index ``class_names[label - 1]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import detection as tvd
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from models.errors import InvalidInputError
from models.files import atomic_write
from models.layers import conv_block
from models.options import DetectOptions
from models.preprocessing import encode_image
from models.registry import Registry
from models.task import Job, Row, Task, device_of
from models.visualize import draw_detections

if TYPE_CHECKING:
    from models.checkpoints import ModelConfig

DETECTORS: Registry[Callable[..., nn.Module]] = Registry("detection architecture")

# torchvision's COCO weights for each full-size architecture (used only when the file is local).
_TORCHVISION_WEIGHTS: dict[str, Any] = {
    "fasterrcnn_resnet50_fpn_v2": tvd.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
    "fasterrcnn_resnet50_fpn": tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    "fasterrcnn_mobilenet_v3_large_fpn": tvd.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1,
    "fasterrcnn_mobilenet_v3_large_320_fpn": tvd.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1,
}


@dataclass(frozen=True)
class Detection:
    """One detected object. ``box`` is (x1, y1, x2, y2) in input-image pixels."""

    box: tuple[float, float, float, float]
    score: float
    label: int
    class_name: str


def _register_torchvision(name: str) -> None:
    tv_builder = getattr(tvd, name)

    def build(*, num_classes: int, **kwargs: Any) -> nn.Module:
        # weights=None and weights_backbone=None: builders never download.
        return tv_builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)

    build.__doc__ = f"torchvision `{name}` with random weights and ``num_classes`` (incl. background)."
    DETECTORS.register(name)(build)


for _name in _TORCHVISION_WEIGHTS:
    _register_torchvision(_name)


class TinyBackbone(nn.Sequential):
    """One stride-2 conv block per width: (B, 3, H, W) -> (B, out_channels, H/2**len(widths), ...).

    A few layers is all the synthetic shapes need, and it trains in minutes on two CPU cores.
    """

    def __init__(self, *, widths: Sequence[int] = (32, 64, 128), out_channels: int = 128) -> None:
        layers: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            layers += conv_block(in_ch, width)
            in_ch = width
        layers += [nn.Conv2d(in_ch, out_channels, 1), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.out_channels = out_channels  # read by torchvision's FasterRCNN


@DETECTORS.register("fasterrcnn_tiny")
def fasterrcnn_tiny(
    *,
    num_classes: int,
    image_size: int = 128,
    widths: Sequence[int] = (32, 64, 128),
    anchor_sizes: Sequence[int] = (16, 24, 32, 48, 64),
    representation_size: int = 256,
) -> nn.Module:
    """A CPU-friendly Faster R-CNN for the quickstart and the tests.

    Single stride-8 feature map, small input (``image_size`` on both min and max side), fewer
    proposals. ``num_classes`` includes background.
    """
    backbone = TinyBackbone(widths=widths, out_channels=widths[-1])
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=((0.5, 1.0, 2.0),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(backbone.out_channels * 7 * 7, representation_size)
    return tvd.FasterRCNN(
        backbone,
        num_classes=None,
        min_size=image_size,
        max_size=image_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=150,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=60,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        box_detections_per_img=50,
    )


def build_detector(architecture: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build ``architecture`` from the registry with random weights (``num_classes`` incl. background)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")
    return DETECTORS.get(architecture)(num_classes=num_classes, **kwargs)


# --------------------------------------------------------------------------- local COCO weights


def coco_weights_file(architecture: str, path: str | os.PathLike | None = None) -> Path | None:
    """Where torchvision's COCO weights for ``architecture`` are on disk, or None.

    Looks at ``path`` if given, else ``$TORCH_HOME/hub/checkpoints/<file>`` (torch.hub's cache).
    Never downloads: ``cvtasks weights pull`` does that explicitly.
    """
    weights = _TORCHVISION_WEIGHTS.get(architecture)
    if weights is None:
        raise InvalidInputError(
            f"`{architecture}` has no torchvision COCO weights; choose one of {sorted(_TORCHVISION_WEIGHTS)}"
        )
    if path is not None:
        return Path(path) if Path(path).is_file() else None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    return cached if cached.is_file() else None


def coco_category_names(architecture: str) -> list[str]:
    """The 90 COCO class names (index ``label - 1``; 'N/A' for unused ids) for torchvision weights."""
    return list(_TORCHVISION_WEIGHTS[architecture].meta["categories"][1:])


def pull_coco_weights(architecture: str) -> Path:
    """Download torchvision's COCO weights into torch.hub's cache. Needs internet; explicit only."""
    weights = _TORCHVISION_WEIGHTS.get(architecture)
    if weights is None:
        raise InvalidInputError(f"no torchvision weights for `{architecture}`; known: {sorted(_TORCHVISION_WEIGHTS)}")
    weights.get_state_dict(progress=True, check_hash=True)
    found = coco_weights_file(architecture)
    assert found is not None
    return found


def build_coco_pretrained(architecture: str, *, path: str | os.PathLike | None = None) -> nn.Module:
    """A full-size detector with torchvision's COCO weights read from a local file (91 classes)."""
    found = coco_weights_file(architecture, path)
    if found is None:
        where = path or Path(torch.hub.get_dir()) / "checkpoints"
        raise FileNotFoundError(
            f"COCO weights for `{architecture}` not found at {where}. "
            f"On a connected host run `cvtasks weights pull {architecture}`, or pass the file's path."
        )
    model = build_detector(architecture, num_classes=91)
    # weights_only=True: a restricted unpickler that loads tensors only, never arbitrary objects.
    model.load_state_dict(torch.load(found, map_location="cpu", weights_only=True))
    return model


# --------------------------------------------------------------------------- fine-tuning helpers


def replace_box_predictor(model: nn.Module, *, num_classes: int) -> None:
    """Swap in a new (randomly initialised) box predictor for a new class set (incl. background)."""
    old = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = FastRCNNPredictor(old.cls_score.in_features, num_classes)


def set_trainable_backbone_layers(model: nn.Module, layers: int) -> None:
    """Freeze all but the last ``layers`` top-level blocks of the backbone body (0 freezes all)."""
    body = getattr(model.backbone, "body", model.backbone)
    blocks = list(body.children())
    if not 0 <= layers <= len(blocks):
        raise ValueError(f"trainable backbone layers must be in 0..{len(blocks)}, got {layers}")
    for i, block in enumerate(blocks):
        block.requires_grad_(i >= len(blocks) - layers)


# --------------------------------------------------------------------------- inference


def postprocess(
    output: dict[str, torch.Tensor], *, class_names: Sequence[str], options: DetectOptions
) -> list[Detection]:
    """torchvision's output dict (boxes [N,4] xyxy, scores [N], labels [N]) -> sorted, filtered Detections."""
    wanted = set(options.class_filter)
    boxes = output["boxes"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    found: list[Detection] = []
    for box, score, label in sorted(zip(boxes, scores, labels), key=lambda t: -t[1]):
        if score < options.score_threshold:
            break
        name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
        if wanted and name not in wanted:
            continue
        found.append(Detection(box=tuple(float(v) for v in box), score=float(score), label=int(label), class_name=name))
        if len(found) >= options.max_detections:
            break
    return found


# The short side, in pixels, that an image keeps after the model's own resize at the least: an
# image of extreme aspect ratio (1 x 4000) would otherwise be squashed to a zero-pixel side.
MIN_RESIZED_SIDE = 32


def fit_for_model(
    image: torch.Tensor, *, max_size: int, min_side: int = MIN_RESIZED_SIDE
) -> tuple[torch.Tensor, float]:
    """(image, scale) that the detector's resize (long side to at most ``max_size``) can take: an
    image whose short side would end up under ``min_side`` px is shrunk here to a long side of
    ``max_size`` and zero-padded at the bottom/right to a short side of ``min_side``; a point (x, y)
    of the input lands at (x * scale, y * scale). Any other image comes back as it is (scale 1)."""
    height, width = image.shape[-2:]
    scale = max_size / max(height, width)
    if min(height, width) * scale >= min_side:
        return image, 1.0
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    pad_h, pad_w = max(0, min_side - size[0]), max(0, min_side - size[1])
    return F.pad(small, (0, pad_w, 0, pad_h)), scale


def _restore(output: dict[str, torch.Tensor], scale: float, height: int, width: int) -> dict[str, torch.Tensor]:
    """Boxes of a fitted image back in the input's pixels, clipped to it; boxes only on the padding go."""
    if scale == 1.0:
        return output
    boxes = output["boxes"] / scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"boxes": boxes[keep], "scores": output["scores"][keep], "labels": output["labels"][keep]}


def predict(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    *,
    class_names: Sequence[str],
    options: Sequence[DetectOptions] | DetectOptions = DetectOptions(),
) -> list[list[Detection]]:
    """Run ``model`` (in eval mode) on float images (3, H, W) in [0, 1] already on its device.

    Any size the decoder admits works (see fit_for_model). Returns one list of Detections per
    image, boxes in that image's pixels.
    """
    return predict_with(model, images, max_size=int(model.transform.max_size), class_names=class_names, options=options)


def predict_with(
    run: Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]],
    images: Sequence[torch.Tensor],
    *,
    max_size: int,
    class_names: Sequence[str],
    options: Sequence[DetectOptions] | DetectOptions = DetectOptions(),
) -> list[list[Detection]]:
    """predict with ``run``: the model, or anything that takes a list of images as it does and
    answers its output dicts (an export, models/export_detection.py); ``max_size`` is the
    model's (``model.transform.max_size``)."""
    per_image = [options] * len(images) if isinstance(options, DetectOptions) else list(options)
    fitted = [fit_for_model(image, max_size=max_size) for image in images]
    with torch.inference_mode():
        outputs = run([image for image, _ in fitted])
    outputs = [_restore(o, scale, *image.shape[-2:]) for o, (_, scale), image in zip(outputs, fitted, images)]
    return [postprocess(o, class_names=class_names, options=opt) for o, opt in zip(outputs, per_image)]


# --------------------------------------------------------------------------- the task


def detection_row(detections: Sequence[Detection]) -> dict[str, Any]:
    """``{"detections": [{"box": [x1, y1, x2, y2] pixels, "score", "label", "class"}]}`` (rounded)."""
    return {
        "detections": [
            {"box": [round(v, 2) for v in d.box], "score": round(d.score, 4), "label": d.label, "class": d.class_name}
            for d in detections
        ]
    }


def coco_results(rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Detection rows -> a COCO-format dict: ``images`` (id = position in ``rows`` + 1, file_name =
    the input's relative path), ``categories`` (id = label, 1-based as the model's), and
    ``annotations`` with bbox [x, y, w, h], area and score."""
    images, annotations = [], []
    for image_id, row in enumerate(rows, start=1):
        images.append({"id": image_id, "file_name": row["input"], "width": row["width"], "height": row["height"]})
        for d in row["detections"]:
            x1, y1, x2, y2 = d["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": d["label"],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "score": d["score"],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names, start=1)]
    return {"images": images, "categories": categories, "annotations": annotations}


class DetectionTask(Task[DetectOptions]):
    """Faster R-CNN: an image -> Detections. Batch jobs write rows ``{"width", "height",
    "detections"}`` (detection_row), ``detections.jsonl`` and ``detections_coco.json`` (a COCO
    dataset file: images, categories and the detections as annotations with scores, which
    pycocotools reads with ``COCO(path)`` or ``coco_gt.loadRes(json["annotations"])``), and
    with ``annotate`` the image with its boxes drawn (``annotated/<input>.jpg``)."""

    name, Options, results = "detection", DetectOptions, "detections"
    default_side = 320

    def build_model(self, config: ModelConfig) -> nn.Module:
        return build_detector(config.architecture, num_classes=len(config.classes) + 1, **config.model_args)

    def options(self, config: ModelConfig, given: Any) -> DetectOptions:
        options = DetectOptions.of(given)
        options.check_classes(config.classes)
        return options

    def run_batch(
        self, model: nn.Module, config: ModelConfig, inputs: Sequence[torch.Tensor], options: Sequence[DetectOptions]
    ) -> list[list[Detection]]:
        device = device_of(model)
        images = [x.to(device, non_blocking=True) for x in inputs]
        return predict(model, images, class_names=config.classes, options=list(options))

    def to_row(self, output: list[Detection], config: ModelConfig, options: DetectOptions) -> dict[str, Any]:
        return detection_row(output)

    def needs_pixels(self, options: DetectOptions) -> bool:
        return options.annotate

    def record(
        self, job: Job, key: str, output: list[Detection], size: tuple[int, int], pixels: np.ndarray | None
    ) -> Row:
        row = super().record(job, key, output, size, pixels)
        if job.options.annotate and pixels is not None:
            drawn = encode_image(draw_detections(pixels, output), "jpeg", quality=90)
            row["annotated"] = job.out.write("annotated", key, ".jpg", drawn)
        return row

    def finish(self, job: Job, rows: list[Row]) -> list[Path]:
        coco = json.dumps(coco_results(rows, job.config.classes))
        return [*super().finish(job, rows), atomic_write(job.out.root / "detections_coco.json", coco)]


DETECTION = DetectionTask()
