"""Image classification: torchvision and timm classifiers by name, a tiny CPU classifier, local
backbone weights, the anatomy that transfer learning needs (backbone stages, head), and the task.

Inputs are RGB images letterboxed to ``input_size`` x ``input_size`` and normalised with the
stored mean/std (``classifier_input``: training, evaluation and serving all call it). Outputs
are logits (B, C) over the model's ``classes``: softmax, one label per image, or for a model
trained multi-label (``config.extra["multi_label"]``) a sigmoid per class, every label over a
threshold. Class ids are ``0..C-1`` with ``classes[i]`` naming id i (no background class). On
request a Grad-CAM map of the most probable class comes with the labels (models/explain.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torchvision import models as tvm

from models.batch.store import write_csv
from models.captioning import load_trunk_weights
from models.errors import InvalidInputError
from models.explain import grad_cam, heatmap_on_image, overlay_heatmap
from models.layers import check_fit, conv_block
from models.options import ClassifyOptions
from models.preprocessing import encode_image, letterbox, normalize
from models.registry import Registry
from models.task import Job, Row, Task, stacked

if TYPE_CHECKING:
    from models.checkpoints import ModelConfig


@dataclass(frozen=True)
class Architecture:
    """How to build one classifier family with random weights, and where its head is.

    ``head``: the dotted path of the final nn.Linear (replaced for a new class set); ``resnet``:
    its trunk takes the weights of a stored model's ResNet encoder (a U-Net's, a captioner's);
    ``cam_layer``: the module whose output is the last conv feature map (B, K, h, w), which
    Grad-CAM explains (None: the family cannot be explained)."""

    build: Callable[..., nn.Module]
    head: str
    resnet: bool = False
    cam_layer: str | None = None


CLASSIFIERS: Registry[Architecture] = Registry("classification architecture")

_TORCHVISION_HEADS = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "mobilenet_v3_small": "classifier.3",
    "mobilenet_v3_large": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "convnext_tiny": "classifier.2",
}


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, **kwargs: Any) -> nn.Module:
        return getattr(tvm, name)(weights=None, num_classes=num_classes, **kwargs)  # weights=None: no download

    return build


for _name, _head in _TORCHVISION_HEADS.items():
    _resnet = _name.startswith("resnet")
    CLASSIFIERS.add(
        _name, Architecture(_torchvision(_name), _head, resnet=_resnet, cam_layer="layer4" if _resnet else "features")
    )


class TinyClassifier(nn.Module):
    """A few stride-2 conv blocks, global average pooling and a linear head: the quickstart's and
    the tests' CPU classifier. (B, 3, H, W) -> logits (B, num_classes); any H, W >= 2**len(widths)."""

    def __init__(self, *, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128), dropout: float = 0.0) -> None:
        super().__init__()
        blocks, in_ch = [], 3
        for width in widths:
            blocks.append(nn.Sequential(*conv_block(in_ch, width)))
            in_ch = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(self.features(images)).flatten(1)))


CLASSIFIERS.add("classifier_tiny", Architecture(TinyClassifier, "fc", cam_layer="features"))


def _architecture(name: str) -> Architecture:
    """The registry's entry, or for ``tu-<timm name>`` a timm model (random weights, no download)."""
    if not name.startswith("tu-"):
        return CLASSIFIERS.get(name)
    import timm

    timm_name = name[3:]
    if not timm.is_model(timm_name):
        raise InvalidInputError(
            f"Unknown timm model `{timm_name}`; list them with timm.list_models(), or use one of {CLASSIFIERS.names()}"
        )

    def build(*, num_classes: int, **kwargs: Any) -> nn.Module:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)

    head = timm.models.get_pretrained_cfg(timm_name)
    return Architecture(build, str(getattr(head, "classifier", None) or "fc"), resnet=False)


def architectures() -> list[str]:
    """The registered names (any timm model also works as ``tu-<name>``)."""
    return CLASSIFIERS.names()


def build_classifier(
    architecture: str, *, num_classes: int, backbone_weights_path: str | os.PathLike | None = None, **kwargs: Any
) -> nn.Module:
    """``architecture`` with random weights and a new ``num_classes`` head; with
    ``backbone_weights_path`` its backbone from a local file or a stored model (``load_backbone``)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    arch = _architecture(architecture)
    model = arch.build(num_classes=num_classes, **kwargs)
    if backbone_weights_path is not None:
        load_backbone(model, architecture, backbone_weights_path)
    return model


# --------------------------------------------------------------------------- backbone and head


def head_of(model: nn.Module, architecture: str) -> nn.Linear:
    return model.get_submodule(_architecture(architecture).head)


def explainable(architecture: str) -> bool:
    return _architecture(architecture).cam_layer is not None


def cam_layer_name(architecture: str) -> str:
    """Where Grad-CAM looks in ``architecture`` (Architecture.cam_layer); InvalidInputError for a
    family it cannot explain (timm models)."""
    name = _architecture(architecture).cam_layer
    if name is None:
        known = [n for n in CLASSIFIERS.names() if explainable(n)]
        raise InvalidInputError(f"explain (Grad-CAM) is not available for `{architecture}`; it is for {known}")
    return name


def cam_layer(model: nn.Module, architecture: str) -> nn.Module:
    """The module Grad-CAM explains: its output is the last conv feature map."""
    return model.get_submodule(cam_layer_name(architecture))


def _is_leaf(module: nn.Module) -> bool:
    """A single layer: none of its children holds parameters (a conv, a norm, a linear)."""
    return not any(any(True for _ in child.parameters()) for child in module.children())


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


_CONTAINERS = ("features", "blocks", "stages", "layers")  # expanded into their children: one stage each


def backbone_stages(model: nn.Module, architecture: str) -> list[nn.Module]:
    """The backbone's stages from input to output, the head excluded: single layers in a row (a
    stem's conv + norm) form one stage, a container of blocks (``features``, ``blocks``,
    ``stages``) gives one stage per block, and what shares a parent with the head (a
    pre-logits layer or norm) is the last stage. Fine-tuning the "last K stages" counts these."""
    head = head_of(model, architecture)
    stages: list[nn.Module] = []
    layers: list[nn.Module] = []  # single layers in a row

    def flush() -> None:
        if layers:
            stages.append(nn.ModuleList(layers) if len(layers) > 1 else layers[0])
            layers.clear()

    for name, child in model.named_children():
        if child is head or not _has_parameters(child):
            continue
        if any(m is head for m in child.modules()):
            flush()
            rest = [m for m in child.children() if m is not head and _has_parameters(m)]
            stages.extend([nn.ModuleList(rest)] if rest else [])
        elif name in _CONTAINERS:
            flush()
            stages.extend(c for c in child.children() if _has_parameters(c))
        elif _is_leaf(child):
            layers.append(child)
        else:
            flush()
            stages.append(child)
    flush()
    return stages


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        import safetensors.torch

        return safetensors.torch.load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors only: never arbitrary objects


def load_backbone(model: nn.Module, architecture: str, source: str | os.PathLike) -> None:
    """The backbone's weights from ``source``, the head left as it is (new, for the data's classes):

    - a local state-dict file (.pth / .pt of torchvision's or timm's weights for the same
      architecture, or .safetensors); every backbone weight must be in it, at its shape;
    - for a ResNet classifier, also a model-store folder whose model has a ResNet ``encoder``
      (a U-Net with a resnet encoder, a captioner): the stem and the stages it holds.
    Never downloads."""
    path, arch = Path(source), _architecture(architecture)
    if arch.resnet:
        load_trunk_weights(model, path, stages=None)
        return
    if path.is_dir():
        raise InvalidInputError(
            f"`{architecture}` takes backbone weights from a state-dict file; a stored model's encoder "
            f"fits only the ResNet classifiers ({[n for n in CLASSIFIERS.names() if n.startswith('resnet')]})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path}: no such file")
    state = _read_state(path)
    prefix = arch.head + "."
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    check_fit(own, state, f"backbone weights {path} do not fit `{architecture}`")
    model.load_state_dict({k: state[k] for k in own}, strict=False)


# --------------------------------------------------------------------------- inference


def imagenet_architectures() -> list[str]:
    """The classifiers that torchvision has ImageNet weights of (``cvtasks weights pull NAME``)."""
    return sorted(_TORCHVISION_HEADS)


def _imagenet(architecture: str) -> Any:
    """torchvision's ImageNet weights enum entry (DEFAULT) of a torchvision classifier."""
    if architecture not in _TORCHVISION_HEADS:
        raise InvalidInputError(
            f"`{architecture}` has no torchvision ImageNet weights; choose one of {sorted(_TORCHVISION_HEADS)}"
        )
    return tvm.get_model_weights(architecture).DEFAULT


def imagenet_weights_file(architecture: str) -> Path | None:
    """Where torchvision's ImageNet weights of ``architecture`` are in torch.hub's cache
    (``$TORCH_HOME/hub/checkpoints``), or None. Never downloads: ``cvtasks weights pull`` does."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_imagenet(architecture).url)
    return cached if cached.is_file() else None


def pull_imagenet_weights(architecture: str) -> Path:
    """Download torchvision's ImageNet weights of ``architecture`` into torch.hub's cache (hash
    checked); the file is then a ``--backbone-weights`` for ``cvtasks train classification``.
    Needs internet; explicit only."""
    _imagenet(architecture).get_state_dict(progress=True, check_hash=True)
    found = imagenet_weights_file(architecture)
    if found is None:
        raise FileNotFoundError(f"the download of {architecture}'s weights left no file in {torch.hub.get_dir()}")
    return found


def classifier_input(rgb: np.ndarray, *, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float (3, size, size): aspect kept, padded with black."""
    boxed = rgb if rgb.shape[:2] == (size, size) else letterbox(rgb, size=size)[0]
    return torch.from_numpy(normalize(boxed, mean=mean, std=std)).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Label:
    """One class of an answer: its id (index into the model's classes), name and probability."""

    label: int
    class_name: str
    probability: float


@dataclass(frozen=True)
class Classification:
    """One image's answer: its labels, best first, and with ``explain`` the Grad-CAM map of the
    most probable class, float32 in [0, 1], over the letterboxed model input (S, S) or, once
    served, the image (H, W); ``explanation_map`` gives it over the image either way."""

    labels: list[Label]
    heatmap: np.ndarray | None = None

    def explanation_map(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The map over an image of ``shape`` (height, width), or None without ``explain``."""
        return None if self.heatmap is None else heatmap_on_image(self.heatmap, shape)


def top_labels(
    logits: torch.Tensor,
    class_names: Sequence[str],
    options: Sequence[ClassifyOptions],
    *,
    multi_label: bool = False,
) -> list[list[Label]]:
    """Logits (B, C) -> per image the ``top_k`` most probable labels (softmax), best first, those
    below ``min_probability`` dropped; ``multi_label``: every label whose sigmoid probability is
    at least ``threshold`` (and ``min_probability``), best first."""
    probs = (logits.float().sigmoid() if multi_label else logits.float().softmax(dim=1)).cpu()
    answers = []
    for row, opt in zip(probs, options):
        values, ids = row.topk(row.numel() if multi_label else min(opt.top_k, row.numel()))
        floor = max(opt.min_probability, opt.threshold) if multi_label else opt.min_probability
        answers.append(
            [Label(int(i), class_names[int(i)], float(p)) for p, i in zip(values.tolist(), ids.tolist()) if p >= floor]
        )
    return answers


def labels_row(labels: Sequence[Label]) -> dict[str, Any]:
    """``{"labels": [{"label", "class", "probability"}]}``, best first (rounded)."""
    return {
        "labels": [{"label": x.label, "class": x.class_name, "probability": round(x.probability, 5)} for x in labels]
    }


def is_multi_label(config: ModelConfig) -> bool:
    return bool(config.extra.get("multi_label"))


def classify_batch(
    model: nn.Module, config: ModelConfig, batch: torch.Tensor, options: Sequence[ClassifyOptions]
) -> list[Classification]:
    """A stacked batch (B, 3, S, S) on the model's device -> one Classification each; when any
    image asks to ``explain``, one forward pass with gradients serves the whole batch."""
    heatmaps: list[np.ndarray | None] = [None] * len(options)
    if any(opt.explain for opt in options):
        logits, maps = grad_cam(model, cam_layer(model, config.architecture), batch)
        heatmaps = [m.cpu().numpy() if opt.explain else None for m, opt in zip(maps, options)]
    else:
        with torch.inference_mode():
            logits = model(batch)
    found = top_labels(logits, config.classes, options, multi_label=is_multi_label(config))
    return [Classification(labels, heatmap) for labels, heatmap in zip(found, heatmaps)]


class ClassificationTask(Task[ClassifyOptions]):
    """An image -> a Classification (its most probable classes, best first). Batch jobs write rows
    ``{"width", "height", "labels": [{"label", "class", "probability"}]}`` (with ``explain`` also
    ``"explanation"``: ``explanations/<input>.png``, the Grad-CAM overlay), ``classifications.jsonl``
    and ``classifications.csv`` (input, top class, its probability)."""

    name, Options, results = "classification", ClassifyOptions, "classifications"

    def build_model(self, config: ModelConfig) -> nn.Module:
        return build_classifier(config.architecture, num_classes=len(config.classes), **config.model_args)

    def options(self, config: ModelConfig, given: Mapping[str, Any]) -> ClassifyOptions:
        options = ClassifyOptions.of(given)
        if options.explain:
            cam_layer_name(config.architecture)  # a clear error now, not a failed batch later
        return options

    def model_input(self, rgb: np.ndarray, config: ModelConfig) -> torch.Tensor:
        norm = config.normalization
        return classifier_input(rgb, size=self.side(config), mean=norm["mean"], std=norm["std"])

    def run_batch(
        self, model: nn.Module, config: ModelConfig, inputs: Sequence[torch.Tensor], options: Sequence[ClassifyOptions]
    ) -> list[Classification]:
        return classify_batch(model, config, stacked(inputs, model), options)

    def to_row(self, output: Classification, config: ModelConfig, options: ClassifyOptions) -> dict[str, Any]:
        return labels_row(output.labels)

    def needs_pixels(self, options: ClassifyOptions) -> bool:
        return options.explain

    def record(
        self, job: Job, key: str, output: Classification, size: tuple[int, int], pixels: np.ndarray | None
    ) -> Row:
        row = super().record(job, key, output, size, pixels)
        heatmap = output.explanation_map(size)
        if heatmap is not None and pixels is not None:
            overlay = encode_image(overlay_heatmap(pixels, heatmap), "png")
            row["explanation"] = job.out.write("explanations", key, ".png", overlay)
        return row

    def finish(self, job: Job, rows: list[Row]) -> list[Path]:
        best = [(r["labels"] or [{"class": "", "probability": ""}])[0] for r in rows]
        table = [[r["input"], b["class"], b["probability"]] for r, b in zip(rows, best)]
        csv_path = write_csv(job.out.root / "classifications.csv", ["input", "class", "probability"], table)
        return [*super().finish(job, rows), csv_path]


CLASSIFICATION = ClassificationTask()
