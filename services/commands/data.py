"""``cvtasks data``: synthetic datasets and format converters."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = data_sub.add_parser("synth", help="write the seeded synthetic 'shapes' dataset")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--train", type=int, default=600, help="training images")
    synth.add_argument("--val", type=int, default=100, help="validation images")
    synth.add_argument("--test", type=int, default=100, help="held-out test images")
    synth.add_argument("--size", type=int, default=128, help="image side in pixels")
    synth.add_argument("--max-shapes", type=int, default=3)
    synth.add_argument(
        "--solid-backgrounds",
        action="store_true",
        help="plain one-colour backgrounds only (the quickstart generator's data)",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--task",
        choices=("shapes", "classification"),
        default="shapes",
        help="shapes: images, masks, boxes and captions of up to --max-shapes shapes; classification: one "
        "shape per image in the ImageFolder layout images/<split>/<class>/",
    )
    synth.add_argument(
        "--domain",
        choices=("source", "target"),
        default="source",
        help="classification: source (large shapes, dark backgrounds) or target (smaller, darker shapes on "
        "bright textures): two domains of the same classes, to transfer between",
    )
    synth.add_argument(
        "--multi-label",
        action="store_true",
        help="classification: 1..3 shapes per image, labels in labels/<split>.csv (classes joined by |)",
    )
    synth.add_argument(
        "--masks", action="store_true", help="classification: also each shape's mask, masks/<split>/... (255 = shape)"
    )
    synth.set_defaults(run=run_synth)

    voc = data_sub.add_parser("voc2coco", help="convert Pascal VOC XML annotations to COCO JSON")
    voc.add_argument("--xml-dir", required=True)
    voc.add_argument("--images", required=True)
    voc.add_argument("--out", required=True, help="COCO JSON file to write")
    voc.add_argument("--classes", nargs="*", default=None, help="class names in order (default: as found)")
    voc.set_defaults(run=run_voc)

    yolo = data_sub.add_parser("yolo2coco", help="convert YOLO txt labels to COCO JSON")
    yolo.add_argument("--labels", required=True, help="folder of <image-stem>.txt files")
    yolo.add_argument("--images", required=True)
    yolo.add_argument("--classes-file", required=True, help="one class name per line")
    yolo.add_argument("--out", required=True)
    yolo.set_defaults(run=run_yolo)


def run_synth(args: argparse.Namespace) -> int:
    from models.synth import generate_classification, generate_shapes

    splits = {"train": args.train, "val": args.val, "test": args.test}
    common = {"splits": splits, "image_size": args.size, "seed": args.seed, "progress": True}
    if args.task == "classification":
        own = {"domain": args.domain, "masks": args.masks, "multi_label": args.multi_label}
        summary = generate_classification(args.out, **common, **own)
    else:
        summary = generate_shapes(
            args.out, **common, max_shapes=args.max_shapes, solid_backgrounds=args.solid_backgrounds
        )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def run_voc(args: argparse.Namespace) -> int:
    from models.datasets import voc_to_coco

    coco = voc_to_coco(args.xml_dir, args.images, args.out, classes=args.classes)
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")
    return 0


def run_yolo(args: argparse.Namespace) -> int:
    from models.datasets import yolo_to_coco

    coco = yolo_to_coco(args.labels, args.images, args.classes_file, args.out)
    print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")
    return 0
