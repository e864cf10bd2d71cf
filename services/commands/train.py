"""``cvtasks train TASK``: one sub-command per task, each filling that task's train config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_dataset_args(parser: argparse.ArgumentParser, *, splits: tuple[str, ...]) -> None:
    """``--data DIR`` (the synthetic layout: images/<split>/, annotations/<split>.json) or explicit files."""
    parser.add_argument("--data", help="dataset folder in the `cvtasks data synth` layout")
    for split in splits:
        parser.add_argument(f"--{split}-images", help=f"{split} image folder (overrides --data)")
        parser.add_argument(f"--{split}-annotations", help=f"{split} COCO JSON (overrides --data)")


def dataset_paths(args: argparse.Namespace, split: str) -> tuple[str, str]:
    images = getattr(args, f"{split}_images")
    annotations = getattr(args, f"{split}_annotations")
    if args.data:
        images = images or str(Path(args.data) / "images" / split)
        annotations = annotations or str(Path(args.data) / "annotations" / f"{split}.json")
    if not images or not annotations:
        raise ValueError(f"give --data DIR or both --{split}-images and --{split}-annotations")
    return images, annotations


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a model and put it in the model store")
    task_sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    _add_detection(task_sub)


def _add_detection(task_sub: argparse._SubParsersAction) -> None:
    from models.train.detection import DetectionTrainConfig as C

    p = task_sub.add_parser("detection", help="train a Faster R-CNN detector on COCO-format boxes")
    add_dataset_args(p, splits=("train", "val"))
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

    train_images, train_ann = dataset_paths(args, "train")
    val_images, val_ann = dataset_paths(args, "val")
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
    print(json.dumps({"model": str(result.model_dir), "metrics": result.metrics,
                      "plot": str(result.plot), "seconds": round(result.seconds, 1)}, indent=2))
    return 0
