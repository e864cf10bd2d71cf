"""Faster R-CNN training: config, the loop's hooks (``DetectionTask``), and ``train_detection``.

Data: COCO JSON + an image folder for train and validation. Every epoch: train, COCO-evaluate
on validation (AP, AP50, AP75), write ``last.pt`` (for ``--resume``), the history plot, and the
best model so far into the model store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import checkpoints, detection
from models.datasets import CocoDetectionDataset, collate_detection
from models.evaluation import coco_from_dict, evaluate_detector
from models.options import option
from models.preprocessing import detection_train_transform, seed_augmentations_in_worker
from models.train import loop
from models.train.config import FitConfig, split_paths, store_settings


@dataclass(frozen=True)
class DetectionTrainConfig(
    FitConfig,
    defaults={"name": "detector", "epochs": 12, "batch_size": 8, "optimizer": "sgd", "lr": 0.02, "warmup_steps": 50},
):
    """Arguments of ``cvtasks train detection`` (with FitConfig's: epochs, lr, device, ...; see ``--help``)."""

    train_images: str
    train_annotations: str
    val_images: str
    val_annotations: str
    architecture: str = option("fasterrcnn_tiny", "architecture (see `cvtasks weights list`)", flag="arch")
    model_args: dict[str, Any] = option({}, "extra builder arguments as JSON, e.g. '{\"image_size\": 160}'")
    pretrained: str | None = option(
        None, "'coco' (torchvision COCO weights from a local file) or a model-store folder to fine-tune"
    )
    weights_path: str | None = option(None, "explicit path of the COCO weights file")
    trainable_backbone_layers: int | None = option(None, "fine-tuning: backbone blocks left trainable")
    augment: bool = option(True, "augmentation (flip, scale, colour)")
    image_size: int = option(128, "augmentation crop size (pixels, square)")

    def __post_init__(self) -> None:
        super().__post_init__()
        detection.DETECTORS.get(self.architecture)  # unknown architecture: list the known ones now


def _initial_model(cfg: DetectionTrainConfig, class_names: list[str]) -> nn.Module:
    num_classes = len(class_names) + 1
    if cfg.pretrained is None:
        return detection.build_detector(cfg.architecture, num_classes=num_classes, **cfg.model_args)
    if cfg.pretrained == "coco":
        model = detection.build_coco_pretrained(cfg.architecture, path=cfg.weights_path)
    else:  # fine-tune a stored model
        model, _ = checkpoints.load_model(cfg.pretrained)
    detection.replace_box_predictor(model, num_classes=num_classes)
    if cfg.trainable_backbone_layers is not None:
        detection.set_trainable_backbone_layers(model, cfg.trainable_backbone_layers)
    return model


class DetectionTask(loop.TrainTask):
    """The loop's hooks for Faster R-CNN: torchvision's loss terms, COCO AP on validation, best AP50."""

    task, best_metric = "detection", "AP50"
    title = "{name} ({architecture})"

    def build(self, device: torch.device, rank: int) -> loop.TrainData:
        cfg = self.cfg
        augment = detection_train_transform(size=cfg.image_size, seed=cfg.seed + rank) if cfg.augment else None
        train_set = CocoDetectionDataset(cfg.train_images, cfg.train_annotations, transform=augment)
        self.val_set = CocoDetectionDataset(cfg.val_images, cfg.val_annotations)
        self.classes = list(train_set.class_names)
        if list(self.val_set.class_names) != self.classes:
            raise ValueError(
                f"train classes {self.classes} differ from validation classes {list(self.val_set.class_names)}"
            )
        self.gt = coco_from_dict(json.loads(Path(cfg.val_annotations).read_text()))
        self.model = _initial_model(cfg, self.classes).to(device)
        return loop.TrainData(train_set, collate_fn=collate_detection, worker_init_fn=seed_augmentations_in_worker)

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def step(self, batch: Any, run: loop.Run) -> dict[str, float]:
        """Images and targets to the device; the sum of torchvision's loss terms, each term and the sum."""
        images = [im.to(run.device, non_blocking=True) for im in batch[0]]
        targets = [{k: v.to(run.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in batch[1]]
        with run.autocast():
            losses = run.nets["model"](images, targets)
            loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {run.epoch} step {run.step}; lower --lr")
        run.update(loss)
        return {**{k: v.item() for k, v in losses.items()}, "loss": loss.item()}

    def evaluate(self, run: loop.Run) -> dict[str, float]:
        return evaluate_detector(
            self.model,
            self.val_set,
            gt=self.gt,
            label_to_category=self.val_set.label_to_category,
            device=run.device,
            batch_size=self.cfg.batch_size,
            progress=self.cfg.progress,
        )

    def epoch_line(self, losses: dict[str, float], metrics: dict[str, float]) -> str:
        return (
            f"loss {losses['loss']:.3f}  AP {metrics['AP']:.3f}  AP50 {metrics['AP50']:.3f}  AP75 {metrics['AP75']:.3f}"
        )

    def stored(self, metrics: dict[str, float], version: str, epoch: int) -> tuple[nn.Module, checkpoints.ModelConfig]:
        cfg, transform = self.cfg, self.model.transform
        architecture, model_args = cfg.architecture, dict(cfg.model_args)
        if cfg.pretrained not in (None, "coco"):  # fine-tuned from a stored model: rebuilt as that one
            base = checkpoints.load_config(cfg.pretrained)
            architecture, model_args = base.architecture, dict(base.model_args)
        return self.model, self.model_config(
            version,
            metrics,
            architecture=architecture,
            classes=tuple(self.classes),
            model_args=model_args,
            input_size=int(transform.min_size[0]),
            normalization={"mean": list(transform.image_mean), "std": list(transform.image_std)},
            extra={"max_size": int(transform.max_size)},
        )


def train_detection(cfg: DetectionTrainConfig) -> loop.Outcome:
    """Train, validate every epoch, keep the best-AP50 model in the store; returns the result."""
    return loop.fit(DetectionTask(cfg), loop.Settings.of(cfg))


QUICKSTART_SPLITS = {"train": 600, "val": 60, "test": 100}


def quickstart_config(data_dir: str | Path, out_dir: str | Path, **overrides: Any) -> DetectionTrainConfig:
    """The quickstart detector's recipe (demo and the slow learning test use exactly this).

    ``data_dir`` holds `cvtasks data synth` output with QUICKSTART_SPLITS; the model goes to
    ``out_dir/model_store/quickstart-detector``, checkpoints and plots to ``out_dir/run``.
    """
    recipe = {
        "architecture": "fasterrcnn_tiny",
        "epochs": 6,
        "optimizer": "adamw",  # converges in fewer epochs than SGD on the shapes
        "lr": 0.002,
    }
    paths = split_paths(data_dir, "annotations", "annotations/{split}.json")
    store = store_settings(out_dir, "quickstart-detector", "run")
    return DetectionTrainConfig(**(paths | store | recipe | overrides))
