"""``cvtasks weights``: list architectures and, explicitly, download torchvision COCO weights."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("weights", help="list architectures; pull pretrained weights (needs internet)")
    w_sub = parser.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    ls = w_sub.add_parser("list", help="architectures and whether their COCO weights are on disk")
    ls.set_defaults(run=run_list)
    pull = w_sub.add_parser("pull", help="download torchvision COCO weights into the torch hub cache")
    pull.add_argument("architecture")
    pull.set_defaults(run=run_pull)


def run_list(args: argparse.Namespace) -> int:
    from models.detection import DETECTORS, coco_weights_file

    for name in DETECTORS.names():
        try:
            found = coco_weights_file(name)
            state = f"COCO weights at {found}" if found else "COCO weights not on disk (`cvtasks weights pull`)"
        except ValueError:
            state = "no pretrained weights (train it: `cvtasks train detection`)"
        print(f"detection  {name:40s} {state}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from models.detection import pull_coco_weights

    print(f"downloaded to {pull_coco_weights(args.architecture)}")
    return 0
