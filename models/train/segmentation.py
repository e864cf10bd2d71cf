"""U-Net / DeepLabV3+ training with Dice + focal loss, validation mIoU, early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import checkpoints, segmentation
from models.evaluation import evaluate_segmenter
from models.losses import SPECS, build_loss
from models.options import option
from models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, seed_augmentations_in_worker, segmentation_train_transform
from models.seg_datasets import IGNORE_INDEX, SegmentationDataset, read_class_names
from models.train import loop
from models.train.config import FitConfig, split_paths, store_settings


@dataclass(frozen=True)
class SegmentationTrainConfig(
    FitConfig, defaults={"name": "segmenter", "batch_size": 8, "warmup_steps": 30, "patience": 5}
):
    """Arguments of ``cvtasks train segmentation`` (with FitConfig's: epochs, lr, device, ...)."""

    train_images: str
    train_masks: str
    val_images: str
    val_masks: str
    classes_file: str
    architecture: str = option("unet", "unet, deeplabv3plus, deeplabv3, fpn", flag="arch")
    encoder: str = option("resnet18", f"encoder name, e.g. {', '.join(segmentation.ENCODERS)}")
    model_args: dict[str, Any] = option({}, "extra smp arguments as JSON, e.g. '{\"decoder_channels\": 64}'")
    loss: str = option("dice+focal", "training loss", choices=tuple(SPECS))
    dice_weight: float = option(1.0, "weight of the Dice term")
    focal_weight: float = option(1.0, "weight of the focal term")
    image_size: int = option(128, "augmentation crop size (pixels)")
    augment: bool = option(True, "augmentation (flip, scale, colour)")

    def __post_init__(self) -> None:
        super().__post_init__()
        segmentation.SEGMENTERS.get(self.architecture)


class SegmentationTask(loop.TrainTask):
    """The loop's hooks for a segmenter: Dice + focal (or another loss), validation mIoU, best mIoU."""

    task, best_metric = "segmentation", "mIoU"
    title = "{name} ({architecture}/{encoder})"

    def build(self, device: torch.device, rank: int) -> loop.TrainData:
        cfg = self.cfg
        self.classes = read_class_names(cfg.classes_file)
        augment = segmentation_train_transform(size=cfg.image_size, seed=cfg.seed + rank) if cfg.augment else None
        train_set = SegmentationDataset(cfg.train_images, cfg.train_masks, class_names=self.classes, transform=augment)
        self.val_set = SegmentationDataset(cfg.val_images, cfg.val_masks, class_names=self.classes)
        self.model = segmentation.build_segmenter(
            cfg.architecture, num_classes=len(self.classes), encoder=cfg.encoder, **cfg.model_args
        ).to(device)
        self.loss_fn = build_loss(
            cfg.loss,
            mode="multiclass",
            ignore_index=IGNORE_INDEX,
            **({"dice_weight": cfg.dice_weight, "focal_weight": cfg.focal_weight} if cfg.loss == "dice+focal" else {}),
        )
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        return loop.TrainData(train_set, worker_init_fn=seed_augmentations_in_worker)

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def step(self, batch: Any, run: loop.Run) -> dict[str, float]:
        """The loss of one batch and its terms (``<term>_loss``)."""
        images = (batch[0].to(run.device) - self.mean) / self.std  # (B, 3, H, W) normalised
        masks = batch[1].to(run.device)  # (B, H, W) class ids
        # padded to the encoder's stride and cropped back, as forward_any_size, through the DDP wrapper
        padded, (height, width) = segmentation.pad_to_multiple(images, segmentation.size_multiple(self.model))
        with run.autocast():
            loss = self.loss_fn(run.nets["model"](padded)[..., :height, :width], masks)
        run.update(loss)
        terms = getattr(self.loss_fn, "last_terms", {})
        return {"loss": loss.item(), **{f"{k}_loss": float(v) for k, v in terms.items()}}

    def evaluate(self, run: loop.Run) -> dict[str, float]:
        report = evaluate_segmenter(
            self.model,
            self.val_set,
            device=run.device,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            progress=self.cfg.progress,
        )
        return {"mIoU": report.miou, "pixel_accuracy": report.pixel_accuracy}

    def epoch_line(self, losses: dict[str, float], metrics: dict[str, float]) -> str:
        return f"loss {losses['loss']:.3f}  val mIoU {metrics['mIoU']:.3f}  pixel acc {metrics['pixel_accuracy']:.3f}"

    def stored(self, metrics: dict[str, float], version: str, epoch: int) -> tuple[nn.Module, checkpoints.ModelConfig]:
        # the stored weights include the encoder's: a rebuilt model must not need the original file
        given = {k: v for k, v in self.cfg.model_args.items() if k != "encoder_weights_path"}
        args = {"encoder": self.cfg.encoder, **given}
        return self.model, self.model_config(
            version, metrics, architecture=self.cfg.architecture, classes=self.classes, model_args=args
        )


def train_segmentation(cfg: SegmentationTrainConfig) -> loop.Outcome:
    """Train; validate mIoU each epoch; keep the best in the store; stop after ``patience`` flat epochs."""
    return loop.fit(SegmentationTask(cfg), loop.Settings.of(cfg))


#: The quickstart segmenters (demo and slow learning test): small resnet18 encoders, 128 px.
QUICKSTART_SEGMENTERS: dict[str, dict[str, Any]] = {
    "unet": {
        "architecture": "unet",
        "encoder": "resnet18",
        "epochs": 6,
        "model_args": {"encoder_depth": 3, "decoder_channels": [64, 32, 16]},
    },
    "deeplabv3plus": {
        "architecture": "deeplabv3plus",
        "encoder": "resnet18",
        "epochs": 8,
        "model_args": {"encoder_depth": 4, "decoder_channels": 64},
    },
}


def quickstart_config(
    data_dir: str | Path, out_dir: str | Path, *, arch: str = "unet", **overrides: Any
) -> SegmentationTrainConfig:
    """The quickstart recipe for ``arch`` on `cvtasks data synth` output (images/, masks/, classes.txt)."""
    paths = split_paths(data_dir, "masks", "masks/{split}") | {"classes_file": str(Path(data_dir) / "classes.txt")}
    store = store_settings(out_dir, f"quickstart-{arch}", f"run-{arch}")
    return SegmentationTrainConfig(**(paths | store | {"lr": 3e-3} | QUICKSTART_SEGMENTERS[arch] | overrides))
