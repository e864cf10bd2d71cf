"""Classifier training with transfer learning: cross-entropy (label smoothing, class weights or a
weighted sampler), validation top-1, the best epoch kept. ``multi_label``: several labels per
image from a CSV (``circle|square``), a sigmoid per class and BCEWithLogits; validation mean AP
(the best epoch's metric: it does not depend on a threshold), macro F1 and subset accuracy at 0.5.

The three ways to transfer (``transfer``), given backbone weights (``backbone_weights``):

- ``frozen``: the backbone is a fixed feature extractor; only the new head trains;
- ``last``: the last ``trainable_stages`` backbone stages train with the head, the earlier ones
  are frozen;
- ``full``: everything trains; ``backbone_lr_scale`` < 1 gives the backbone a smaller learning
  rate than the head (discriminative learning rates). Without backbone weights this is
  training from scratch.

Gradual unfreezing (``unfreeze_every`` = N, with ``full`` or ``last``): the backbone starts
frozen and one more stage, from the top, trains every N epochs until what the mode trains does.

Frozen stages stay in eval mode, so their batch-norm statistics are the backbone's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import WeightedRandomSampler

from models import checkpoints, classification
from models.class_datasets import ClassificationDataset, class_counts, load_items, read_class_list
from models.evaluation import evaluate_classifier, evaluate_multi_label
from models.options import option
from models.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    classification_train_transform,
    seed_augmentations_in_worker,
)
from models.train import loop
from models.train.config import FitConfig, split_paths, store_settings

TRANSFER_MODES = ("full", "last", "frozen")
BALANCE = ("none", "weights", "sampler")


@dataclass(frozen=True)
class ClassificationTrainConfig(FitConfig, defaults={"name": "classifier", "patience": 5}):
    """Arguments of ``cvtasks train classification`` (with FitConfig's: epochs, lr, device, ...)."""

    train_images: str
    val_images: str
    train_labels: str | None = None  # a CSV (image, label); None: train_images is an ImageFolder tree
    val_labels: str | None = None
    multi_label: bool = option(
        False, "several labels per image (CSV label cells like circle|square): sigmoid + BCE, metric mean AP"
    )
    classes_file: str | None = option(None, "class names, one per line (default: the training data's, sorted)")
    architecture: str = option(
        "resnet18", f"{', '.join(classification.architectures())}, or any timm model as tu-<name>", flag="arch"
    )
    model_args: dict[str, Any] = option({}, "extra builder arguments as JSON, e.g. '{\"widths\": [8, 16, 32]}'")
    backbone_weights: str | None = option(
        None,
        "start the backbone from a local state-dict file (torchvision's or timm's weights of this architecture) "
        "or, for resnets, a stored model's folder (a U-Net's or a captioner's ResNet encoder); default: random",
    )
    transfer: str = option(
        "full",
        "full: everything trains (from scratch without --backbone-weights); last: the last --trainable-stages "
        "backbone stages and the head; frozen: only the head (a fixed feature extractor)",
        choices=TRANSFER_MODES,
    )
    trainable_stages: int = option(1, "with --transfer last: backbone stages that train, counted from the top")
    backbone_lr_scale: float = option(1.0, "the backbone's learning rate is lr x this (e.g. 0.1); the head's is lr")
    unfreeze_every: int = option(
        0,
        "gradual unfreezing: the backbone starts frozen and one more stage, from the top, trains every this many "
        "epochs, up to what --transfer trains (full: all, last: --trainable-stages); 0: off",
    )
    balance: str = option(
        "none",
        "class imbalance: weights (loss weights ~ 1 / class frequency) or sampler (balanced batches)",
        choices=BALANCE,
    )
    label_smoothing: float = option(0.0, "cross-entropy label smoothing in [0, 1)")
    image_size: int = option(224, "input side in pixels (images are letterboxed to it)")
    augment: bool = option(True, "augmentation (shrink and place, flip, colour)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.0 <= self.label_smoothing < 1.0 or self.backbone_lr_scale < 0 or self.trainable_stages < 0:
            raise ValueError("label_smoothing must be in [0, 1), backbone_lr_scale and trainable_stages >= 0")
        if self.transfer not in TRANSFER_MODES or self.balance not in BALANCE:
            raise ValueError(f"transfer must be one of {TRANSFER_MODES}, balance one of {BALANCE}")
        if self.unfreeze_every < 0 or (self.unfreeze_every and self.transfer == "frozen"):
            raise ValueError("unfreeze_every must be >= 0, and needs --transfer full or last (frozen never unfreezes)")
        if self.multi_label and (self.balance != "none" or self.label_smoothing or not self.train_labels):
            raise ValueError("multi_label takes CSV labels (train_labels), without balance or label_smoothing")
        classification._architecture(self.architecture)  # an unknown name lists the known ones


def apply_transfer(model: nn.Module, architecture: str, mode: str, trainable_stages: int = 1) -> list[nn.Module]:
    """Freeze what ``mode`` freezes (see the module docstring); returns the frozen stages."""
    stages = classification.backbone_stages(model, architecture)
    if mode not in TRANSFER_MODES:
        raise ValueError(f"transfer must be one of {TRANSFER_MODES}, got {mode!r}")
    if mode == "last" and trainable_stages > len(stages):
        raise ValueError(f"`{architecture}` has {len(stages)} backbone stages; trainable_stages must be <= that")
    keep = {"full": len(stages), "last": trainable_stages, "frozen": 0}[mode]
    frozen = stages[: len(stages) - keep]
    model.requires_grad_(True)
    for stage in frozen:
        stage.requires_grad_(False)
    return frozen


def unfrozen_stages(epoch: int, every: int, final: int) -> int:
    """Backbone stages that train in ``epoch`` (from 1) under gradual unfreezing: none in the first
    ``every`` epochs, then one more from the top every ``every`` epochs, at most ``final``."""
    return min(final, (epoch - 1) // every)


def parameter_groups(model: nn.Module, architecture: str, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """The head at lr, the backbone at lr x ``backbone_lr_scale`` (common.build_optimizer's groups)."""
    head = {id(p) for p in classification.head_of(model, architecture).parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) in head], "lr_scale": 1.0},
        {"params": [p for p in model.parameters() if id(p) not in head], "lr_scale": backbone_lr_scale},
    ]


class KeepFrozenInEval(nn.Module):
    """The model as the loop trains it: ``train()`` leaves the frozen stages in eval mode."""

    def __init__(self, model: nn.Module, frozen: list[nn.Module]) -> None:
        super().__init__()
        self.model, self._frozen = model, frozen  # frozen: a plain list (they are the model's own)

    def train(self, mode: bool = True) -> KeepFrozenInEval:
        super().train(mode)
        for stage in self._frozen:
            stage.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Loss weights ~ 1 / class frequency, mean 1 over the classes present (absent classes: 0)."""
    weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return torch.tensor(weights * (counts > 0).sum() / max(weights.sum(), 1e-12), dtype=torch.float32)


class ClassificationTask(loop.TrainTask):
    """The loop's hooks for a classifier: cross-entropy, validation top-1 / top-5, best top-1."""

    task, best_metric = "classification", "top1"
    title = "{name} ({architecture}, transfer {transfer})"

    def __init__(self, cfg: ClassificationTrainConfig) -> None:
        super().__init__(cfg)
        self.best_metric = "mAP" if cfg.multi_label else "top1"

    def build(self, device: torch.device, rank: int) -> loop.TrainData:
        cfg = self.cfg
        given = read_class_list(cfg.classes_file) if cfg.classes_file else None
        multi = {"multi_label": cfg.multi_label}
        self.classes, train_items = load_items(cfg.train_images, cfg.train_labels, given, **multi)
        _, val_items = load_items(cfg.val_images, cfg.val_labels, self.classes, **multi)
        augment = classification_train_transform(size=cfg.image_size, seed=cfg.seed + rank) if cfg.augment else None
        shape = {"size": cfg.image_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        train_set = ClassificationDataset(train_items, self.classes, transform=augment, **shape)
        self.val_set = ClassificationDataset(val_items, self.classes, **shape)
        self.model = classification.build_classifier(
            cfg.architecture,
            num_classes=len(self.classes),
            backbone_weights_path=cfg.backbone_weights,
            **cfg.model_args,
        ).to(device)
        self.frozen = apply_transfer(self.model, cfg.architecture, cfg.transfer, cfg.trainable_stages)
        counts = class_counts(train_items, len(self.classes))
        weight = class_weights(counts).to(device) if cfg.balance == "weights" else None
        self.loss_fn = (
            nn.BCEWithLogitsLoss()
            if cfg.multi_label
            else nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        )
        sampler = None
        if cfg.balance == "sampler":
            per_item = class_weights(counts)[[label for _, label in train_items]]
            sampler = WeightedRandomSampler(per_item.double(), num_samples=len(train_items), replacement=True)
        return loop.TrainData(train_set, worker_init_fn=seed_augmentations_in_worker, sampler=sampler)

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def train_modules(self) -> dict[str, nn.Module]:
        return {"model": KeepFrozenInEval(self.model, self.frozen)}

    def begin_epoch(self, run: loop.Run) -> None:
        """Gradual unfreezing: freeze all but the epoch's top stages. The optimiser was built over
        everything ``transfer`` trains (it skips parameters without gradients until they thaw)."""
        cfg = self.cfg
        if not cfg.unfreeze_every:
            return
        if run.procs.distributed:
            raise ValueError("gradual unfreezing changes what trains, and DDP fixes that at the start: use one process")
        final = len(classification.backbone_stages(self.model, cfg.architecture))
        final = cfg.trainable_stages if cfg.transfer == "last" else final
        keep = unfrozen_stages(run.epoch, cfg.unfreeze_every, final)
        self.frozen[:] = apply_transfer(self.model, cfg.architecture, "last", keep)  # KeepFrozenInEval shares the list

    def optimizers(self, settings: loop.Settings, steps_per_epoch: int) -> dict[str, Any]:
        from models.train import common

        groups = parameter_groups(self.model, self.cfg.architecture, self.cfg.backbone_lr_scale)
        optimizer = common.build_optimizer(
            groups, name=settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay
        )
        total = settings.epochs * steps_per_epoch
        scheduler = common.warmup_cosine(optimizer, warmup_steps=settings.warmup_steps, total_steps=total)
        return {"optimizer": optimizer, "scheduler": scheduler}

    def step(self, batch: Any, run: loop.Run) -> dict[str, float]:
        images, labels = batch[0].to(run.device), batch[1].to(run.device)
        with run.autocast():
            loss = self.loss_fn(run.nets["model"](images), labels)
        run.update(loss)
        return {"loss": loss.item()}

    def evaluate(self, run: loop.Run) -> dict[str, float]:
        if self.cfg.multi_label:
            multi = evaluate_multi_label(self.model, self.val_set, device=run.device, progress=self.cfg.progress)
            return {"mAP": multi.mean_ap, "macro_f1": multi.macro_f1, "subset_accuracy": multi.subset_accuracy}
        report = evaluate_classifier(self.model, self.val_set, device=run.device, progress=self.cfg.progress)
        return {"top1": report.top1, "top5": report.top5}

    def epoch_line(self, losses: dict[str, float], metrics: dict[str, float]) -> str:
        if self.cfg.multi_label:
            return (
                f"loss {losses['loss']:.3f}  val mAP {metrics['mAP']:.3f}  macro F1 {metrics['macro_f1']:.3f}  "
                f"subset accuracy {metrics['subset_accuracy']:.3f}"
            )
        return f"loss {losses['loss']:.3f}  val top-1 {metrics['top1']:.3f}  top-5 {metrics['top5']:.3f}"

    def stored(self, metrics: dict[str, float], version: str, epoch: int) -> tuple[nn.Module, checkpoints.ModelConfig]:
        # the backbone's weights are in the stored weights: a rebuilt model needs no other file
        args = {k: v for k, v in self.cfg.model_args.items() if not k.endswith("weights_path")}
        fields = {"architecture": self.cfg.architecture, "classes": self.classes, "model_args": args}
        return self.model, self.model_config(version, metrics, **fields, extra={"multi_label": self.cfg.multi_label})


def train_classification(cfg: ClassificationTrainConfig) -> loop.Outcome:
    """Train; validate top-1 each epoch; keep the best in the store; stop after ``patience`` flat epochs."""
    return loop.fit(ClassificationTask(cfg), loop.Settings.of(cfg))


#: The quickstart classifier (`cvtasks train classification --quickstart`, the slow learning test):
#: the tiny CNN at 64 px on `cvtasks data synth --task classification`.
QUICKSTART_RECIPE: dict[str, Any] = {
    "architecture": "classifier_tiny",
    "image_size": 64,
    "epochs": 8,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup_steps": 20,
}
QUICKSTART_SPLITS = {"train": 600, "val": 60, "test": 100}


def quickstart_config(data_dir: str | Path, out_dir: str | Path, **overrides: Any) -> ClassificationTrainConfig:
    """The quickstart recipe on `cvtasks data synth --task classification` output (images/<split>/<class>/)."""
    store = store_settings(out_dir, "quickstart-classifier", "run-classifier")
    return ClassificationTrainConfig(**(split_paths(data_dir) | store | QUICKSTART_RECIPE | overrides))
