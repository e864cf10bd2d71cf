"""U-Net / DeepLabV3+ training with Dice + focal loss, validation mIoU, early stopping."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models import checkpoints, segmentation
from models.evaluation import evaluate_segmenter
from models.losses import build_loss
from models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, seed_augmentations_in_worker, segmentation_train_transform
from models.seg_datasets import IGNORE_INDEX, SegmentationDataset, read_class_names
from models.train import common


@dataclass(frozen=True)
class SegmentationTrainConfig:
    """Arguments of ``cvtasks train segmentation``."""

    train_images: str
    train_masks: str
    val_images: str
    val_masks: str
    classes_file: str
    run_dir: str = "runs/segmenter"
    model_store: str = "model_store"
    name: str = "segmenter"
    architecture: str = "unet"
    encoder: str = "resnet18"
    model_args: dict[str, Any] = field(default_factory=dict)
    loss: str = "dice+focal"
    dice_weight: float = 1.0
    focal_weight: float = 1.0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    patience: int = 5  # early stopping: epochs without a better validation mIoU
    image_size: int = 128
    augment: bool = True
    device: str | None = None
    amp: bool = True  # CUDA only
    seed: int = 0
    workers: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")
        segmentation.SEGMENTERS.get(self.architecture)


@dataclass
class SegTrainResult:
    model_dir: Path
    metrics: dict[str, float]
    history: dict[str, list[float]]
    seconds: float
    plot: Path
    stopped_early: bool


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, device: torch.device, *, mean: torch.Tensor, std: torch.Tensor, epoch: int,
                    scaler: torch.amp.GradScaler | None, progress: bool) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = defaultdict(float)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if progress else True)
    for step, (images, masks) in enumerate(bar, 1):
        images = (images.to(device) - mean) / std  # (B, 3, H, W) normalised
        masks = masks.to(device)  # (B, H, W) class ids
        with torch.autocast(device.type, enabled=scaler is not None):
            loss = loss_fn(segmentation.forward_any_size(model, images), masks)
        common.optimizer_step(loss, optimizer, scheduler, scaler)
        sums["loss"] += loss.item()
        for k, v in getattr(loss_fn, "last_terms", {}).items():
            sums[f"{k}_loss"] += float(v)
        bar.set_postfix(loss=f"{sums['loss'] / step:.3f}")
    return {k: v / max(1, len(loader)) for k, v in sums.items()}


def _store_config(cfg: SegmentationTrainConfig, classes: tuple[str, ...], metrics: dict, version: str):
    return checkpoints.ModelConfig(
        name=cfg.name, task="segmentation", architecture=cfg.architecture, classes=classes,
        # The stored weights include the encoder: a rebuilt model must not need the original file.
        model_args={"encoder": cfg.encoder, **{k: v for k, v in cfg.model_args.items() if k != "encoder_weights_path"}},
        input_size=cfg.image_size,
        normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        metrics=metrics, version=version, extra={"train_config": asdict(cfg)},
    )


def train_segmentation(cfg: SegmentationTrainConfig) -> SegTrainResult:
    """Train; validate mIoU each epoch; keep the best in the store; stop after ``patience`` flat epochs."""
    started = time.perf_counter()
    common.seed_everything(cfg.seed)
    device = common.pick_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    classes = read_class_names(cfg.classes_file)
    augment = segmentation_train_transform(size=cfg.image_size, seed=cfg.seed) if cfg.augment else None
    train_set = SegmentationDataset(cfg.train_images, cfg.train_masks, class_names=classes, transform=augment)
    val_set = SegmentationDataset(cfg.val_images, cfg.val_masks, class_names=classes)
    model = segmentation.build_segmenter(cfg.architecture, num_classes=len(classes), encoder=cfg.encoder,
                                         **cfg.model_args).to(device)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                        drop_last=len(train_set) > cfg.batch_size, worker_init_fn=seed_augmentations_in_worker)
    loss_fn = build_loss(cfg.loss, mode="multiclass", ignore_index=IGNORE_INDEX,
                         **({"dice_weight": cfg.dice_weight, "focal_weight": cfg.focal_weight}
                            if cfg.loss == "dice+focal" else {}))
    optimizer = common.build_optimizer(model.parameters(), name="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = common.warmup_cosine(optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.epochs * len(loader))
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    history: dict[str, list[float]] = defaultdict(list)
    start_epoch, best, stale = 1, -1.0, 0
    version = checkpoints.next_version(cfg.model_store, cfg.name)
    if cfg.resume and (state := common.load_resume_state(run_dir)) is not None:
        start_epoch, best, version = common.restore_resume_state(
            state, model=model, optimizer=optimizer, scheduler=scheduler, history=history)
        stale = len(history["mIoU"]) - 1 - max(range(len(history["mIoU"])), key=history["mIoU"].__getitem__)

    model_dir = Path(cfg.model_store) / cfg.name
    for epoch in range(start_epoch, cfg.epochs + 1):
        losses = train_one_epoch(model, loader, loss_fn, optimizer, scheduler, device, mean=mean, std=std,
                                 epoch=epoch, scaler=scaler, progress=cfg.progress)
        report = evaluate_segmenter(model, val_set, device=device, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                    progress=cfg.progress)
        metrics = {"mIoU": report.miou, "pixel_accuracy": report.pixel_accuracy}
        for k, v in {**losses, **metrics}.items():
            history[k].append(v)
        if cfg.progress:
            print(f"epoch {epoch}/{cfg.epochs}: loss {losses['loss']:.3f}  val mIoU {report.miou:.3f}  "
                  f"pixel acc {report.pixel_accuracy:.3f}", flush=True)
        if report.miou > best:
            best, stale = report.miou, 0
            checkpoints.save_model(model, _store_config(cfg, classes, metrics, version), model_dir)
        else:
            stale += 1
        common.save_resume_state(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                                 history=history, best=best, version=version)
        common.plot_history(history, run_dir / "curves.png", title=f"{cfg.name} ({cfg.architecture}/{cfg.encoder})")
        if stale >= cfg.patience:
            break

    final = checkpoints.load_config(model_dir)
    return SegTrainResult(model_dir=model_dir, metrics=dict(final.metrics), history=dict(history),
                          seconds=time.perf_counter() - started, plot=run_dir / "curves.png",
                          stopped_early=stale >= cfg.patience)


#: The quickstart segmenters (demo and slow learning test): small resnet18 encoders, 128 px.
QUICKSTART_SEGMENTERS: dict[str, dict[str, Any]] = {
    "unet": {"architecture": "unet", "encoder": "resnet18", "epochs": 6,
             "model_args": {"encoder_depth": 3, "decoder_channels": [64, 32, 16]}},
    "deeplabv3plus": {"architecture": "deeplabv3plus", "encoder": "resnet18", "epochs": 8,
                      "model_args": {"encoder_depth": 4, "decoder_channels": 64}},
}


def quickstart_config(data_dir: str | Path, out_dir: str | Path, *, arch: str = "unet",
                      **overrides: Any) -> SegmentationTrainConfig:
    """The quickstart recipe for ``arch`` on `cvtasks data synth` output (images/, masks/, classes.txt)."""
    data, out = Path(data_dir), Path(out_dir)
    settings: dict[str, Any] = {
        "train_images": str(data / "images" / "train"), "train_masks": str(data / "masks" / "train"),
        "val_images": str(data / "images" / "val"), "val_masks": str(data / "masks" / "val"),
        "classes_file": str(data / "classes.txt"), "run_dir": str(out / f"run-{arch}"),
        "model_store": str(out / "model_store"), "name": f"quickstart-{arch}", "lr": 3e-3,
        **QUICKSTART_SEGMENTERS[arch],
    }
    return SegmentationTrainConfig(**{**settings, **overrides})
