"""Semantic segmentation over segmentation-models-pytorch: registry, padding, predict.

Label maps are uint8/int64 (H, W) of class ids: ``0..K-1`` with ``class_names[i]`` naming id i
(id 0 is usually "background"). Binary models (one output channel) give ids {0, 1}.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from models.batch.store import write_csv
from models.errors import InvalidInputError
from models.options import SegmentOptions
from models.preprocessing import encode_image
from models.registry import Registry
from models.task import Job, Row, Task, device_of
from models.visualize import overlay_labels

if TYPE_CHECKING:
    from models.checkpoints import ModelConfig

SEGMENTERS: Registry = Registry("segmentation architecture")

#: Encoders known to build offline with encoder_weights=None (any smp encoder name also works).
ENCODERS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "tu-mobilenetv3_small_100", "efficientnet-b0")


def _register_smp(name: str, smp_arch: str) -> None:
    def build(
        *, num_classes: int, encoder: str = "resnet18", encoder_weights_path: str | None = None, **kwargs: Any
    ) -> nn.Module:
        if encoder not in smp.encoders.get_encoder_names() and not encoder.startswith("tu-"):
            raise InvalidInputError(
                f"Unknown encoder `{encoder}`. Available options include: {list(ENCODERS)} "
                "and any timm encoder as `tu-<timm name>`"
            )
        model = smp.create_model(smp_arch, encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs)
        if encoder_weights_path is not None:
            load_encoder_weights(model, encoder_weights_path)
        return model

    build.__doc__ = f"smp `{smp_arch}`: random weights unless ``encoder_weights_path`` names a local file."
    SEGMENTERS.register(name)(build)


for _name, _arch in (("unet", "unet"), ("deeplabv3plus", "deeplabv3plus"), ("deeplabv3", "deeplabv3"), ("fpn", "fpn")):
    _register_smp(_name, _arch)


def load_encoder_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Encoder weights from a local file (.safetensors or a torch state dict, loaded weights_only)."""
    if str(path).endswith(".safetensors"):
        import safetensors.torch

        state = safetensors.torch.load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    expected = set(model.encoder.state_dict())
    if not expected & set(state):
        raise InvalidInputError(f"{path} holds no weights of this encoder (its keys start {sorted(state)[:3]})")
    model.encoder.load_state_dict(state, strict=False)


def build_segmenter(architecture: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """``num_classes`` output channels (1 = binary, sigmoid; >= 2 = multiclass, softmax)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return SEGMENTERS.get(architecture)(num_classes=num_classes, **kwargs)


def size_multiple(model: nn.Module) -> int:
    """The factor input sides must be divisible by: the encoder's output stride (32, or 16/8 for DeepLab)."""
    return int(getattr(getattr(model, "encoder", None), "output_stride", 32))


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (B, C, H, W) at the bottom/right to sides divisible by ``multiple``; returns (padded, (H, W))."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    return F.pad(images, (0, pad_w, 0, pad_h)), (height, width)


def forward_any_size(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits (B, C, H, W) for normalised images (B, 3, H, W) of any size: pad, run, crop back."""
    padded, (height, width) = pad_to_multiple(images, size_multiple(model))
    return model(padded)[..., :height, :width]


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) int64 class ids (sigmoid > 0.5 for one channel)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def normalize_batch(images: Sequence[torch.Tensor], *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Stack same-size float images (3, H, W) in [0, 1] and normalise per channel."""
    batch = torch.stack(list(images))
    mean_t = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - mean_t) / std_t


def predict_labels(
    model: nn.Module, image: torch.Tensor, *, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """One float image (3, H, W) in [0, 1] -> (H, W) int64 class ids at the same size."""
    with torch.inference_mode():
        logits = forward_any_size(model, normalize_batch([image], mean=mean, std=std))
    return logits_to_labels(logits)[0]


# --------------------------------------------------------------------------- whole images, large images


MAX_TILES = 4096  # per image in the tile mode; beyond it the request is refused (it would run for hours)


class LargeImageMode(str, Enum):  # noqa: UP042 (StrEnum would change str() of a member)
    """The values of SegmentOptions.large_image_mode."""

    RESIZE = "resize"
    TILE = "tile"


@dataclass(frozen=True)
class Segmentation:
    """A label map (H, W) uint8 at the input's size and how it was made."""

    labels: np.ndarray
    processing: str  # "whole" | "resized" | "tiled"
    detail: str


def _probabilities(model: nn.Module, image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(C, H, W) class probabilities for one float image (3, H, W) in [0, 1] (sigmoid for 1 channel)."""
    logits = forward_any_size(model, normalize_batch([image], mean=mean, std=std))[0]
    if logits.shape[0] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p])
    return logits.softmax(0)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def segment_image(
    model: nn.Module,
    image: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    options: SegmentOptions = SegmentOptions(),
) -> Segmentation:
    """Segment a float image (3, H, W) in [0, 1] on the model's device; labels at (H, W)."""
    height, width = image.shape[-2:]
    if max(height, width) <= options.max_side:
        labels = _probabilities(model, image, mean, std).argmax(0)
        return Segmentation(labels.byte().cpu().numpy(), "whole", f"{width}x{height} in one pass")
    if options.large_image_mode == LargeImageMode.RESIZE:
        scale = options.max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        small = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        labels = _probabilities(model, small, mean, std).argmax(0).byte().cpu().numpy()
        full = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        return Segmentation(full, "resized", f"{width}x{height} resized to {size[1]}x{size[0]} and back")
    tile, overlap = options.max_side, options.overlap
    ys, xs = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
    if len(ys) * len(xs) > MAX_TILES:
        raise InvalidInputError(
            f"tiling this {width}x{height} image at max_side {tile} takes {len(ys) * len(xs)} "
            f"tiles, more than {MAX_TILES}; raise max_side or use the resize mode"
        )
    total: torch.Tensor | None = None
    count = torch.zeros(height, width, device=image.device)
    for y in ys:
        for x in xs:
            probs = _probabilities(model, image[:, y : y + tile, x : x + tile], mean, std)
            total = torch.zeros(probs.shape[0], height, width, device=image.device) if total is None else total
            total[:, y : y + tile, x : x + tile] += probs
            count[y : y + tile, x : x + tile] += 1
    labels = (total / count).argmax(0).byte().cpu().numpy()
    return Segmentation(labels, "tiled", f"{len(ys) * len(xs)} tiles of {tile} px, overlap {overlap} px")


def segment_batch(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    options: Sequence[SegmentOptions],
) -> list[Segmentation]:
    """Segment several float images (3, H, W): those of one size that fit ``max_side`` run as one
    batched forward pass; the others (other sizes, large images) one by one."""
    results: list[Segmentation | None] = [None] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (image, opt) in enumerate(zip(images, options)):
        if max(image.shape[-2:]) <= opt.max_side:
            groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    for (height, width), members in groups.items():
        if len(members) < 2:
            continue
        logits = forward_any_size(model, normalize_batch([images[i] for i in members], mean=mean, std=std))
        for i, labels in zip(members, logits_to_labels(logits).byte().cpu().numpy()):
            results[i] = Segmentation(labels, "whole", f"{width}x{height} in one pass")
    return [
        r if r is not None else segment_image(model, images[i], mean=mean, std=std, options=options[i])
        for i, r in enumerate(results)
    ]


def class_areas(labels: np.ndarray, class_names: Sequence[str]) -> list[tuple[int, str, int, float]]:
    """(class id, name, pixel count, area fraction) for every class, zeros included."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    total = max(1, labels.size)
    return [(i, name, int(counts[i]), float(counts[i]) / total) for i, name in enumerate(class_names)]


def class_contours(
    labels: np.ndarray, class_names: Sequence[str], *, skip_background: bool = True
) -> list[tuple[int, str, list[np.ndarray]]]:
    """Outer outline polygons (each (N, 2) int x, y) per class present, via cv2.findContours."""
    found = []
    for class_id, name in enumerate(class_names):
        if skip_background and class_id == 0:
            continue
        binary = (labels == class_id).astype(np.uint8)
        if not binary.any():
            continue
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        found.append((class_id, name, [c.reshape(-1, 2) for c in contours]))
    return found


# --------------------------------------------------------------------------- the task


def labels_from_png(data: bytes) -> np.ndarray:
    """A served label map (a one-channel PNG) -> (H, W) uint8 class ids (remote batch jobs)."""
    labels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2:
        raise ValueError("the server's label map is not a one-channel PNG")
    return labels


def area_row(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{class name: {"pixels", "fraction"}}`` of a label map, every class included."""
    return {
        name: {"pixels": count, "fraction": round(fraction, 6)}
        for _, name, count, fraction in class_areas(labels, class_names)
    }


class SegmentationTask(Task[SegmentOptions]):
    """Semantic segmentation: an image -> a Segmentation (label map at the input's size). Batch
    jobs write ``masks/<input>.png`` (pixel value = class id) and with ``include_overlay``
    ``overlays/<input>.png``; rows ``{"width", "height", "mask", "processing", "classes": {name:
    {"pixels", "fraction"}}}`` (with ``include_contours`` also ``"contours": {name: [[[x, y],
    ...], ...]}``); ``segments.jsonl`` and ``segments.csv`` (a column of area fractions per class)."""

    name, Options, results = "segmentation", SegmentOptions, "segments"
    default_side = 256

    def build_model(self, config: ModelConfig) -> nn.Module:
        """Output channels: 1 for a binary model (``extra["binary"]``), else one per class."""
        channels = 1 if config.extra.get("binary") else len(config.classes)
        return build_segmenter(config.architecture, num_classes=channels, **config.model_args)

    def run_batch(
        self, model: nn.Module, config: ModelConfig, inputs: Sequence[torch.Tensor], options: Sequence[SegmentOptions]
    ) -> list[Segmentation]:
        device, norm = device_of(model), config.normalization
        return segment_batch(
            model, [x.to(device) for x in inputs], mean=norm["mean"], std=norm["std"], options=list(options)
        )

    def to_row(self, output: Segmentation, config: ModelConfig, options: SegmentOptions) -> dict[str, Any]:
        return {"processing": output.processing, "classes": area_row(output.labels, config.classes)}

    def needs_pixels(self, options: SegmentOptions) -> bool:
        return options.include_overlay

    def record(self, job: Job, key: str, output: Segmentation, size: tuple[int, int], pixels: np.ndarray | None) -> Row:
        out, config, options = job.out, job.config, job.options
        labels = output.labels
        row: dict[str, Any] = {
            "height": int(labels.shape[0]),
            "width": int(labels.shape[1]),
            "mask": out.write("masks", key, ".png", encode_image(labels, "png")),
            **self.to_row(output, config, options),
        }
        if options.include_overlay and pixels is not None:
            blended = overlay_labels(pixels, labels, alpha=options.overlay_alpha)
            row["overlay"] = out.write("overlays", key, ".png", encode_image(blended, "png"))
        if options.include_contours:
            row["contours"] = {
                name: [poly.tolist() for poly in polygons]
                for _, name, polygons in class_contours(labels, config.classes)
            }
        return row

    def finish(self, job: Job, rows: list[Row]) -> list[Path]:
        names = list(job.config.classes)
        table = [[r["input"], r["width"], r["height"], *(r["classes"][n]["fraction"] for n in names)] for r in rows]
        csv_path = write_csv(job.out.root / "segments.csv", ["input", "width", "height", *names], table)
        return [*super().finish(job, rows), csv_path]


SEGMENTATION = SegmentationTask()
