"""``cvtasks eval TASK``: evaluate a stored model on a dataset split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.commands.train import add_dataset_args, dataset_paths


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate a stored model on a dataset")
    task_sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    p = task_sub.add_parser("detection", help="COCO AP, AP50, AP75 (pycocotools) of a stored detector")
    p.add_argument("--model", required=True, help="model name in the store")
    p.add_argument("--model-store", default="model_store")
    add_dataset_args(p, splits=("test",))
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="also write the metrics JSON here")
    p.set_defaults(run=run_detection)

    from services.commands.train import add_segmentation_data_args

    s = task_sub.add_parser("segmentation", help="mIoU, per-class IoU/Dice, pixel accuracy, confusion matrix")
    s.add_argument("--model", required=True)
    s.add_argument("--model-store", default="model_store")
    add_segmentation_data_args(s, splits=("test",))
    s.add_argument("--device", default=None)
    s.add_argument("--out", default=None, help="folder for metrics.json and confusion.png")
    s.set_defaults(run=run_segmentation)


def run_detection(args: argparse.Namespace) -> int:
    from models import checkpoints
    from models.datasets import CocoDetectionDataset
    from models.evaluation import coco_from_dict, evaluate_detector
    from models.train.common import pick_device

    images, annotations = dataset_paths(args, "test")
    device = pick_device(args.device)
    model, config = checkpoints.load_model(checkpoints.resolve(args.model_store, args.model), device=device)
    dataset = CocoDetectionDataset(images, annotations)
    if list(dataset.class_names) != list(config.classes):
        raise ValueError(f"dataset classes {list(dataset.class_names)} differ from the model's {list(config.classes)}")
    gt = coco_from_dict(json.loads(Path(annotations).read_text()))
    metrics = evaluate_detector(model, dataset, gt=gt, label_to_category=dataset.label_to_category,
                                device=device, batch_size=args.batch_size)
    report = {"model": config.name, "version": config.version, "images": len(dataset), **metrics}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_segmentation(args: argparse.Namespace) -> int:
    from models import checkpoints
    from models.evaluation import evaluate_segmenter, plot_confusion
    from models.seg_datasets import SegmentationDataset
    from models.train.common import pick_device
    from services.commands.train import segmentation_paths

    images, masks = segmentation_paths(args, "test")
    device = pick_device(args.device)
    model, config = checkpoints.load_model(checkpoints.resolve(args.model_store, args.model), device=device)
    dataset = SegmentationDataset(images, masks, class_names=config.classes)
    report = evaluate_segmenter(model, dataset, device=device, mean=config.normalization["mean"],
                                std=config.normalization["std"])
    print(f"model {config.name} v{config.version} on {len(dataset)} images")
    print(f"mIoU {report.miou:.4f}   pixel accuracy {report.pixel_accuracy:.4f}")
    for name in config.classes:
        print(f"  {name:16s} IoU {report.iou[name]:.4f}   Dice {report.dice[name]:.4f}")
    print("confusion matrix (pixels):")
    print(report.confusion_text())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        print(f"wrote {out / 'metrics.json'} and {plot_confusion(report, out / 'confusion.png')}")
    return 0
