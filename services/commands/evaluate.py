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
