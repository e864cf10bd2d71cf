"""``cvtasks weights``: list architectures and, explicitly, download torchvision COCO weights (detectors)
or ImageNet weights (classifiers)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    w_sub = parser.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    ls = w_sub.add_parser("list", help="architectures and whether their COCO / ImageNet weights are on disk")
    ls.set_defaults(run=run_list)
    pull = w_sub.add_parser(
        "pull", help="download torchvision COCO (detector) or ImageNet (classifier) weights into the torch hub cache"
    )
    pull.add_argument("architecture")
    pull.set_defaults(run=run_pull)
    imp = w_sub.add_parser("import", help="put torchvision COCO weights (a local file) into the model store")
    imp.add_argument("architecture")
    imp.add_argument("--name", default=None, help="model name in the store (default: the architecture)")
    imp.add_argument("--path", default=None, help="weights file (default: the torch hub cache)")
    imp.add_argument("--model-store", default="model_store")
    imp.set_defaults(run=run_import)


def run_list(args: argparse.Namespace) -> int:
    from models.detection import DETECTORS, coco_weights_file

    for name in DETECTORS.names():
        try:
            found = coco_weights_file(name)
            state = f"COCO weights at {found}" if found else "COCO weights not on disk (`cvtasks weights pull`)"
        except ValueError:
            state = "no pretrained weights (train it: `cvtasks train detection`)"
        print(f"detection  {name:40s} {state}")
    from models.classification import architectures, imagenet_architectures, imagenet_weights_file

    for name in architectures():
        if name in imagenet_architectures():
            found = imagenet_weights_file(name)
            state = f"ImageNet weights at {found}" if found else "ImageNet weights not on disk (`cvtasks weights pull`)"
        else:
            state = "no pretrained weights (train it: `cvtasks train classification`)"
        print(f"classification  {name:35s} {state}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from models.classification import imagenet_architectures, pull_imagenet_weights
    from models.detection import pull_coco_weights

    if args.architecture in imagenet_architectures():
        found = pull_imagenet_weights(args.architecture)
        print(f"downloaded to {found}; train from it with --backbone-weights {found}")
    else:
        print(f"downloaded to {pull_coco_weights(args.architecture)}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from models import checkpoints
    from models.detection import build_coco_pretrained, coco_category_names

    model = build_coco_pretrained(args.architecture, path=args.path)
    transform = model.transform
    config = checkpoints.ModelConfig(
        name=args.name or args.architecture,
        task="detection",
        architecture=args.architecture,
        classes=tuple(coco_category_names(args.architecture)),
        input_size=int(transform.min_size[0]),
        normalization={"mean": list(transform.image_mean), "std": list(transform.image_std)},
        version=checkpoints.next_version(args.model_store, args.name or args.architecture),
        extra={"source": "torchvision COCO_V1 weights"},
    )
    folder = checkpoints.save_model(model, config, f"{args.model_store}/{config.name}")
    print(f"stored {args.architecture} with COCO weights as {folder} (version {config.version})")
    return 0
