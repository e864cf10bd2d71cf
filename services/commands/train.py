"""``cvtasks train TASK``: one sub-command per task, each filling that task's train config."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Labels:
    """A task's second training input beside the images: its option name and its place under ``--data``."""

    name: str        # --<split>-<name>
    under_data: str  # default path under --data; "{split}" is filled in
    help: str        # "{split}" is filled in


ANNOTATIONS = Labels("annotations", "annotations/{split}.json", "{split} COCO JSON (overrides --data)")
MASKS = Labels("masks", "masks/{split}", "{split} mask folder: PNG label maps or palette PNGs (overrides --data)")
CAPTIONS = Labels("captions", "captions/{split}.json",
                  "{split} captions: COCO captions JSON, JSONL or CSV (image, caption) (overrides --data)")


def add_data_args(parser: argparse.ArgumentParser, labels: Labels, *, splits: tuple[str, ...]) -> None:
    """``--data DIR`` (the `cvtasks data synth` layout: images/<split>/ + labels) or explicit paths per split."""
    parser.add_argument("--data", help="dataset folder in the `cvtasks data synth` layout")
    for split in splits:
        parser.add_argument(f"--{split}-images", help=f"{split} image folder (overrides --data)")
        parser.add_argument(f"--{split}-{labels.name}", help=labels.help.format(split=split))


def data_paths(args: argparse.Namespace, labels: Labels, split: str) -> tuple[str, str]:
    """(images, labels) of one split: the explicit options first, else their places under ``--data``."""
    images = getattr(args, f"{split}_images")
    second = getattr(args, f"{split}_{labels.name}")
    if args.data:
        images = images or str(Path(args.data) / "images" / split)
        second = second or str(Path(args.data) / labels.under_data.format(split=split))
    if not images or not second:
        raise ValueError(f"give --data DIR or both --{split}-images and --{split}-{labels.name}")
    return images, second


def report(result: dict[str, Any]) -> None:
    """Print a finished run's summary as JSON: once, by rank 0, when torchrun started several processes."""
    from models.train.distributed import process_rank

    if process_rank() == 0:
        print(json.dumps(result, indent=2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    task_sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    _add_detection(task_sub)
    _add_segmentation(task_sub)
    _add_captioning(task_sub)
    _add_generation(task_sub)


def _add_detection(task_sub: argparse._SubParsersAction) -> None:
    from models.train.detection import DetectionTrainConfig as C

    p = task_sub.add_parser("detection", help="train a Faster R-CNN detector on COCO-format boxes")
    add_data_args(p, ANNOTATIONS, splits=("train", "val"))
    p.add_argument("--arch", default=C.architecture, help="architecture (see `cvtasks weights list`)")
    p.add_argument("--model-args", default="{}", help='JSON of extra builder arguments, e.g. \'{"image_size": 160}\'')
    p.add_argument("--name", default=C.name, help="model name in the store")
    p.add_argument("--model-store", default=C.model_store)
    p.add_argument("--run-dir", default=None, help="checkpoints and plots (default runs/<name>)")
    p.add_argument("--pretrained", default=None,
                   help="'coco' (torchvision COCO weights from a local file) or a model-store folder to fine-tune")
    p.add_argument("--weights-path", default=None, help="explicit path of the COCO weights file")
    p.add_argument("--trainable-backbone-layers", type=int, default=None)
    p.add_argument("--epochs", type=int, default=C.epochs)
    p.add_argument("--batch-size", type=int, default=C.batch_size)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=C.optimizer)
    p.add_argument("--lr", type=float, default=C.lr)
    p.add_argument("--weight-decay", type=float, default=C.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=C.warmup_steps)
    p.add_argument("--image-size", type=int, default=C.image_size, help="augmentation crop size (pixels)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--seed", type=int, default=C.seed)
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.set_defaults(run=run_detection)


def run_detection(args: argparse.Namespace) -> int:
    from models.train.detection import DetectionTrainConfig, train_detection

    train_images, train_ann = data_paths(args, ANNOTATIONS, "train")
    val_images, val_ann = data_paths(args, ANNOTATIONS, "val")
    cfg = DetectionTrainConfig(
        train_images=train_images, train_annotations=train_ann, val_images=val_images, val_annotations=val_ann,
        run_dir=args.run_dir or f"runs/{args.name}", model_store=args.model_store, name=args.name,
        architecture=args.arch, model_args=json.loads(args.model_args), pretrained=args.pretrained,
        weights_path=args.weights_path, trainable_backbone_layers=args.trainable_backbone_layers,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, augment=not args.no_augment,
        image_size=args.image_size, device=args.device, amp=not args.no_amp, seed=args.seed,
        workers=args.workers, resume=args.resume,
    )
    result = train_detection(cfg)
    report({"model": str(result.model_dir), "metrics": result.metrics,
            "plot": str(result.plot), "seconds": round(result.seconds, 1)})
    return 0


def add_classes_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", default=None,
                        help="class-name file, one per line for ids 0.. (default: <data>/classes.txt)")


def classes_file(args: argparse.Namespace) -> str:
    if args.classes:
        return args.classes
    if args.data:
        return str(Path(args.data) / "classes.txt")
    raise ValueError("give --classes FILE (one class name per line) or --data DIR")


def _add_segmentation(task_sub: argparse._SubParsersAction) -> None:
    from models.losses import SPECS
    from models.segmentation import ENCODERS
    from models.train.segmentation import SegmentationTrainConfig as C

    p = task_sub.add_parser("segmentation", help="train a U-Net / DeepLabV3+ segmenter on image + mask folders")
    add_data_args(p, MASKS, splits=("train", "val"))
    add_classes_arg(p)
    p.add_argument("--arch", default=C.architecture, help="unet, deeplabv3plus, deeplabv3, fpn")
    p.add_argument("--encoder", default=C.encoder, help=f"encoder name, e.g. {', '.join(ENCODERS)}")
    p.add_argument("--model-args", default="{}", help='JSON of extra smp arguments, e.g. \'{"decoder_channels": 64}\'')
    p.add_argument("--loss", choices=SPECS, default=C.loss)
    p.add_argument("--dice-weight", type=float, default=C.dice_weight)
    p.add_argument("--focal-weight", type=float, default=C.focal_weight)
    p.add_argument("--name", default=C.name)
    p.add_argument("--model-store", default=C.model_store)
    p.add_argument("--run-dir", default=None, help="checkpoints and plots (default runs/<name>)")
    p.add_argument("--epochs", type=int, default=C.epochs)
    p.add_argument("--patience", type=int, default=C.patience, help="early stopping: epochs without better val mIoU")
    p.add_argument("--batch-size", type=int, default=C.batch_size)
    p.add_argument("--lr", type=float, default=C.lr)
    p.add_argument("--weight-decay", type=float, default=C.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=C.warmup_steps)
    p.add_argument("--image-size", type=int, default=C.image_size, help="augmentation crop size (pixels)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=C.seed)
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.set_defaults(run=run_segmentation)


def run_segmentation(args: argparse.Namespace) -> int:
    from models.train.segmentation import SegmentationTrainConfig, train_segmentation

    train_images, train_masks = data_paths(args, MASKS, "train")
    val_images, val_masks = data_paths(args, MASKS, "val")
    cfg = SegmentationTrainConfig(
        train_images=train_images, train_masks=train_masks, val_images=val_images, val_masks=val_masks,
        classes_file=classes_file(args), run_dir=args.run_dir or f"runs/{args.name}", model_store=args.model_store,
        name=args.name, architecture=args.arch, encoder=args.encoder, model_args=json.loads(args.model_args),
        loss=args.loss, dice_weight=args.dice_weight, focal_weight=args.focal_weight, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        patience=args.patience, image_size=args.image_size, augment=not args.no_augment, device=args.device,
        amp=not args.no_amp, seed=args.seed, workers=args.workers, resume=args.resume,
    )
    result = train_segmentation(cfg)
    report({"model": str(result.model_dir), "metrics": result.metrics, "plot": str(result.plot),
            "stopped_early": result.stopped_early, "seconds": round(result.seconds, 1)})
    return 0


def _add_captioning(task_sub: argparse._SubParsersAction) -> None:
    from models.captioning import ENCODERS, POOLINGS
    from models.train.captioning import CaptioningTrainConfig as C

    p = task_sub.add_parser("captioning", help="train a Show-and-Tell captioner (ResNet + LSTM)")
    add_data_args(p, CAPTIONS, splits=("train", "val"))
    p.add_argument("--quickstart", action="store_true",
                   help="use the quickstart recipe (the demo's; its encoder starts from <model-store>/quickstart-unet); "
                        "other flags given explicitly still apply")
    p.add_argument("--backbone", default=C.backbone, help=f"encoder: {', '.join(ENCODERS)}")
    p.add_argument("--encoder-weights", default=None,
                   help="initialise the ResNet from a local torchvision state dict file, or from the encoder of a "
                        "stored model (a model-store folder, e.g. a U-Net with a resnet18 encoder)")
    p.add_argument("--freeze-encoder", action="store_true", help="train only the projection and the decoder")
    p.add_argument("--pooling", choices=POOLINGS, default=C.pooling)
    p.add_argument("--grid", type=int, default=C.grid, help="grid pooling: cells per side")
    p.add_argument("--stages", type=int, default=C.stages, help="ResNet residual stages kept, 1..4")
    p.add_argument("--augment", action="store_true",
                   help="shrink + shift + colour jitter (no flips, no hue: captions say left/right and colours)")
    p.add_argument("--embed-size", type=int, default=C.embed_size)
    p.add_argument("--hidden-size", type=int, default=C.hidden_size)
    p.add_argument("--num-layers", type=int, default=C.num_layers)
    p.add_argument("--dropout", type=float, default=C.dropout)
    p.add_argument("--min-count", type=int, default=C.min_count, help="rarer words become <unk>")
    p.add_argument("--max-length", type=int, default=C.max_length, help="words per caption (longer are cut)")
    p.add_argument("--image-size", type=int, default=C.image_size)
    p.add_argument("--name", default=C.name)
    p.add_argument("--model-store", default=C.model_store)
    p.add_argument("--run-dir", default=None, help="checkpoints and plots (default runs/<name>)")
    p.add_argument("--epochs", type=int, default=C.epochs)
    p.add_argument("--patience", type=int, default=C.patience, help="early stopping: epochs without better val BLEU-4")
    p.add_argument("--batch-size", type=int, default=C.batch_size)
    p.add_argument("--lr", type=float, default=C.lr)
    p.add_argument("--weight-decay", type=float, default=C.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=C.warmup_steps)
    p.add_argument("--clip-grad", type=float, default=C.clip_grad, help="gradient-norm clipping")
    p.add_argument("--words-weight", type=float, default=C.words_weight,
                   help="weight of the auxiliary bag-of-words loss on the image embedding (0 = off)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=C.seed)
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.set_defaults(run=run_captioning)


def as_flags(recipe: dict[str, Any]) -> str:
    """A recipe as the flags that give it: {"batch_size": 16} -> "--batch-size 16"."""
    return ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in recipe.items())


def under_recipe(settings: dict[str, Any], config_class: type, recipe: dict[str, Any]) -> dict[str, Any]:
    """``--quickstart``: the recipe's value for every setting whose flag the user left at the
    config's default; flags the user changed win."""
    fields = config_class.__dataclass_fields__
    return {k: recipe[k] if k in recipe and v == fields[k].default else v for k, v in settings.items()}


def run_captioning(args: argparse.Namespace) -> int:
    from models.train.captioning import (
        QUICKSTART_ENCODER_FROM,
        QUICKSTART_RECIPE,
        CaptioningTrainConfig,
        train_captioning,
    )

    train_images, train_captions = data_paths(args, CAPTIONS, "train")
    val_images, val_captions = data_paths(args, CAPTIONS, "val")
    settings = dict(
        train_images=train_images, train_captions=train_captions, val_images=val_images, val_captions=val_captions,
        run_dir=args.run_dir or f"runs/{args.name}", model_store=args.model_store, name=args.name,
        backbone=args.backbone, encoder_weights_path=args.encoder_weights, pooling=args.pooling, grid=args.grid,
        stages=args.stages, augment=args.augment,
        embed_size=args.embed_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
        dropout=args.dropout, trainable_encoder=not args.freeze_encoder, min_count=args.min_count,
        max_length=args.max_length, image_size=args.image_size, epochs=args.epochs, patience=args.patience,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        clip_grad=args.clip_grad, words_weight=args.words_weight, device=args.device, seed=args.seed, resume=args.resume,
    )
    if args.quickstart:
        settings = under_recipe(settings, CaptioningTrainConfig, {
            **QUICKSTART_RECIPE, "encoder_weights_path": str(Path(args.model_store) / QUICKSTART_ENCODER_FROM)})
    result = train_captioning(CaptioningTrainConfig(**settings))
    report({"model": str(result["model_dir"]), "best_val_bleu4": round(result["best_bleu4"], 4),
            "plot": str(result["plot"]), "seconds": round(result["seconds"], 1)})
    return 0


def _add_generation(task_sub: argparse._SubParsersAction) -> None:
    from models.generation import CHANNELS, IMAGE_SIZES
    from models.train.generation import QUICKSTART_RECIPE
    from models.train.generation import GenerationTrainConfig as C

    p = task_sub.add_parser("generation", help="train a DCGAN on a folder of images")
    p.add_argument("--images", required=True, help="folder of images (any size: centre-cropped and resized)")
    p.add_argument("--quickstart", action="store_true",
                   help=f"use the quickstart recipe (the demo's: {as_flags(QUICKSTART_RECIPE)}); flags you give "
                        "override it")
    p.add_argument("--image-size", type=int, choices=IMAGE_SIZES, default=C.image_size)
    p.add_argument("--channels", type=int, choices=CHANNELS, default=C.channels, help="1 = grayscale")
    p.add_argument("--nz", type=int, default=C.nz, help="latent size")
    p.add_argument("--ngf", type=int, default=C.ngf, help="generator feature width")
    p.add_argument("--ndf", type=int, default=C.ndf, help="discriminator feature width")
    p.add_argument("--latent-components", type=int, default=C.latent_components, metavar="K",
                   help="draw latents from a fixed mixture of K unit Gaussians (GM-GAN) instead of N(0, I); "
                        "helps when the images are of distinct kinds (0 = N(0, I))")
    p.add_argument("--latent-spread", type=float, default=C.latent_spread,
                   help="the mixture's means are drawn from N(0, spread^2)")
    p.add_argument("--name", default=C.name)
    p.add_argument("--model-store", default=C.model_store)
    p.add_argument("--run-dir", default=None, help="checkpoints, sample grids and the loss plot (default runs/<name>)")
    p.add_argument("--epochs", type=int, default=C.epochs)
    p.add_argument("--batch-size", type=int, default=C.batch_size)
    p.add_argument("--lr", type=float, default=C.lr)
    p.add_argument("--beta1", type=float, default=C.beta1)
    p.add_argument("--label-smoothing", type=float, default=C.label_smoothing,
                   help="one-sided: real targets are 1 - this (e.g. 0.1)")
    p.add_argument("--lr-decay-from", type=int, default=C.lr_decay_from, metavar="EPOCH",
                   help="from this epoch on, lower both learning rates linearly towards 0 at the last epoch "
                        "(0 = constant)")
    p.add_argument("--ema-decay", type=float, default=C.ema_decay, metavar="DECAY",
                   help="store and draw samples from a moving average of G's weights with this decay per "
                        "step, e.g. 0.999 (0 = the last step's weights)")
    p.add_argument("--augment", default=C.augment, metavar="LIST",
                   help="differentiable augmentation of every image D sees (DiffAugment): a comma list of "
                        "translation, color (empty = none)")
    p.add_argument("--sample-seed", type=int, default=C.sample_seed, help="fixed noise of the per-epoch sample grid")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=C.seed)
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.set_defaults(run=run_generation)


def run_generation(args: argparse.Namespace) -> int:
    from models.train.generation import QUICKSTART_RECIPE, GenerationTrainConfig, train_generation

    settings = dict(
        images=args.images, run_dir=args.run_dir or f"runs/{args.name}", model_store=args.model_store,
        name=args.name, image_size=args.image_size, channels=args.channels, nz=args.nz, ngf=args.ngf,
        ndf=args.ndf, latent_components=args.latent_components, latent_spread=args.latent_spread,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta1=args.beta1,
        label_smoothing=args.label_smoothing, lr_decay_from=args.lr_decay_from, ema_decay=args.ema_decay,
        augment=args.augment, sample_seed=args.sample_seed,
        device=args.device, seed=args.seed, resume=args.resume,
    )
    if args.quickstart:
        settings = under_recipe(settings, GenerationTrainConfig, QUICKSTART_RECIPE)
    result = train_generation(GenerationTrainConfig(**settings))
    report({"model": str(result["model_dir"]), "samples": str(result["samples"]),
            "plot": str(result["plot"]), "seconds": round(result["seconds"], 1)})
    return 0
