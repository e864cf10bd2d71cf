"""Faster R-CNN training: config, ``train_one_epoch``, and ``train_detection`` (the loop).

Data: COCO JSON + an image folder for train and validation. Every epoch: train, COCO-evaluate
on validation (AP, AP50, AP75), write ``last.pt`` (for ``--resume``), the history plot, and the
best model so far into the model store.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models import checkpoints, detection
from models.datasets import CocoDetectionDataset, collate_detection
from models.evaluation import coco_from_dict, evaluate_detector
from models.preprocessing import detection_train_transform, seed_augmentations_in_worker
from models.train import common


@dataclass(frozen=True)
class DetectionTrainConfig:
    """Arguments of ``cvtasks train detection`` (see ``--help`` for each)."""

    train_images: str
    train_annotations: str
    val_images: str
    val_annotations: str
    run_dir: str = "runs/detection"
    model_store: str = "model_store"
    name: str = "detector"
    architecture: str = "fasterrcnn_tiny"
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # None, "coco" (torchvision weights from a local file) or a model-store folder
    weights_path: str | None = None  # explicit path of the COCO weights file
    trainable_backbone_layers: int | None = None
    epochs: int = 12
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float = 0.02
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    augment: bool = True
    image_size: int = 128  # augmentation output size (pixels, square)
    device: str | None = None
    amp: bool = True  # mixed precision, used only on CUDA
    seed: int = 0
    workers: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        detection.DETECTORS.get(self.architecture)  # unknown architecture: list the known ones now


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict[str, float]
    history: dict[str, list[float]]
    seconds: float
    plot: Path


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    *,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each torchvision loss term and their sum."""
    model.train()
    sums: dict[str, float] = defaultdict(float)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if progress else True)
    for step, (images, targets) in enumerate(bar, 1):
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            losses = model(images, targets)
            loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}; lower --lr")
        common.optimizer_step(loss, optimizer, scheduler, scaler)
        for k, v in losses.items():
            sums[k] += v.item()
        sums["loss"] += loss.item()
        bar.set_postfix(loss=f"{sums['loss'] / step:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
    return {k: v / max(1, len(loader)) for k, v in sums.items()}


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


def _store_config(
    cfg: DetectionTrainConfig, model: nn.Module, classes: list[str], metrics: dict, version: str
) -> checkpoints.ModelConfig:
    architecture = cfg.architecture
    model_args = dict(cfg.model_args)
    if cfg.pretrained not in (None, "coco"):
        base = checkpoints.load_config(cfg.pretrained)
        architecture, model_args = base.architecture, dict(base.model_args)
    transform = model.transform
    return checkpoints.ModelConfig(
        name=cfg.name,
        task="detection",
        architecture=architecture,
        classes=tuple(classes),
        model_args=model_args,
        input_size=int(transform.min_size[0]),
        normalization={"mean": list(transform.image_mean), "std": list(transform.image_std)},
        metrics=metrics,
        version=version,
        extra={"max_size": int(transform.max_size), "train_config": asdict(cfg)},
    )


def train_detection(cfg: DetectionTrainConfig) -> TrainResult:
    """Train, validate every epoch, keep the best-AP50 model in the store; returns the result."""
    started = time.perf_counter()
    common.seed_everything(cfg.seed)
    device = common.pick_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    augment = detection_train_transform(size=cfg.image_size, seed=cfg.seed) if cfg.augment else None
    train_set = CocoDetectionDataset(cfg.train_images, cfg.train_annotations, transform=augment)
    val_set = CocoDetectionDataset(cfg.val_images, cfg.val_annotations)
    classes = list(train_set.class_names)
    if list(val_set.class_names) != classes:
        raise ValueError(f"train classes {classes} differ from validation classes {list(val_set.class_names)}")
    gt = coco_from_dict(json.loads(Path(cfg.val_annotations).read_text()))

    model = _initial_model(cfg, classes).to(device)
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate_detection,
        num_workers=cfg.workers, drop_last=len(train_set) > cfg.batch_size,
        worker_init_fn=seed_augmentations_in_worker,
    )
    optimizer = common.build_optimizer(
        model.parameters(), name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = common.warmup_cosine(
        optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.epochs * len(loader)
    )
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    history: dict[str, list[float]] = defaultdict(list)
    start_epoch, best = 1, -1.0
    # One store version per training run; a resumed run keeps the version it started with.
    version = checkpoints.next_version(cfg.model_store, cfg.name)
    if cfg.resume and (state := common.load_resume_state(run_dir)) is not None:
        start_epoch, best, version = common.restore_resume_state(
            state, model=model, optimizer=optimizer, scheduler=scheduler, history=history)

    model_dir = Path(cfg.model_store) / cfg.name
    for epoch in range(start_epoch, cfg.epochs + 1):
        losses = train_one_epoch(
            model, loader, optimizer, scheduler, device, epoch=epoch, scaler=scaler, progress=cfg.progress
        )
        metrics = evaluate_detector(
            model, val_set, gt=gt, label_to_category=val_set.label_to_category, device=device,
            batch_size=cfg.batch_size, progress=cfg.progress,
        )
        for k, v in {**losses, **metrics}.items():
            history[k].append(v)
        if cfg.progress:
            print(f"epoch {epoch}/{cfg.epochs}: loss {losses['loss']:.3f}  "
                  f"AP {metrics['AP']:.3f}  AP50 {metrics['AP50']:.3f}  AP75 {metrics['AP75']:.3f}", flush=True)
        if metrics["AP50"] > best:
            best = metrics["AP50"]
            checkpoints.save_model(model, _store_config(cfg, model, classes, metrics, version), model_dir)
        common.save_resume_state(
            run_dir, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch, history=history, best=best,
            version=version,
        )
        common.plot_history(history, run_dir / "curves.png", title=f"{cfg.name} ({cfg.architecture})")

    final = checkpoints.load_config(model_dir) if (model_dir / checkpoints.CONFIG_FILE).is_file() else None
    return TrainResult(
        model_dir=model_dir,
        metrics=dict(final.metrics) if final else {},
        history=dict(history),
        seconds=time.perf_counter() - started,
        plot=run_dir / "curves.png",
    )


QUICKSTART_SPLITS = {"train": 600, "val": 60, "test": 100}


def quickstart_config(data_dir: str | Path, out_dir: str | Path, **overrides: Any) -> DetectionTrainConfig:
    """The quickstart detector's recipe (demo and the slow learning test use exactly this).

    ``data_dir`` holds `cvtasks data synth` output with QUICKSTART_SPLITS; the model goes to
    ``out_dir/model_store/quickstart-detector``, checkpoints and plots to ``out_dir/run``.
    """
    data, out = Path(data_dir), Path(out_dir)
    settings: dict[str, Any] = {
        "train_images": str(data / "images" / "train"),
        "train_annotations": str(data / "annotations" / "train.json"),
        "val_images": str(data / "images" / "val"),
        "val_annotations": str(data / "annotations" / "val.json"),
        "run_dir": str(out / "run"),
        "model_store": str(out / "model_store"),
        "name": "quickstart-detector",
        "architecture": "fasterrcnn_tiny",
        "epochs": 6,
        "optimizer": "adamw",  # converges in fewer epochs than SGD on the shapes
        "lr": 0.002,
    }
    return DetectionTrainConfig(**{**settings, **overrides})
