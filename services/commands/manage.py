"""``cvtasks models list|load|unload --server HOST:PORT``: what a running server serves, and
swapping models in and out without restarting it (load/unload need an admin token when the
server has tokens: CVTASKS_TOKEN or CVTASKS_TOKEN_FILE)."""

from __future__ import annotations

import argparse
import json

from google.protobuf.json_format import MessageToDict


def add_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="the loaded models")
    ls.add_argument("--task", default="", help="only this task's models")
    load = actions.add_parser(
        "load", help="(re)load a model from the server's model store; a new version swaps in without failing requests"
    )
    load.add_argument("name")
    load.add_argument("--default", action="store_true", help="make it its task's default model")
    unload = actions.add_parser("unload", help="stop serving a model (its queued requests finish first)")
    unload.add_argument("name")
    for action in (ls, load, unload):
        action.add_argument("--server", default="localhost:50051")
        action.add_argument("--timeout", type=float, default=300.0, help="seconds (a load warms the model up)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from services.client import CvtasksClient

    with CvtasksClient.from_env(args.server, timeout=args.timeout) as client:
        if args.action == "list":
            result = [MessageToDict(m, preserving_proto_field_name=True) for m in client.list_models(args.task)]
        elif args.action == "load":
            result = MessageToDict(
                client.load_model(args.name, make_default=args.default), preserving_proto_field_name=True
            )
        else:
            result = MessageToDict(client.unload_model(args.name), preserving_proto_field_name=True)
    print(json.dumps(result, indent=2))
    return 0
