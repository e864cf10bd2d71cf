"""The ``cvtasks`` command. Thin: each sub-command lives in services/commands/ and only parses
arguments into the config dataclasses of models/ and services/."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# albumentations checks PyPI for updates at import unless told not to; we are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import grpc  # noqa: E402

# Command -> (module in services/commands/, one-line help). Only the module of the command being
# run is imported: several of them import torch (seconds), which a client command or `--help`
# should not wait for.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "serve models of one or more tasks over gRPC"),
    "detect": ("detect", "detect objects in images with a running detection server"),
    "segment": ("segment", "segment images with a running segmentation server"),
    "caption": ("caption", "caption images with a running captioning server"),
    "classify": ("classify", "classify images with a running classification server"),
    "generate": ("generate", "draw images from a running generation server"),
    "batch": ("batch", "run a model over a folder of images (or generate many), results on disk"),
    "models": ("manage", "list, load or unload the models of a running server"),
    "data": ("data", "make or convert datasets"),
    "train": ("train", "train a model and put it in the model store"),
    "eval": ("evaluate", "evaluate a stored model on a dataset"),
    "export": ("export", "export a stored model to ONNX or TorchScript, checked against PyTorch"),
    "weights": ("weights", "list architectures; pull pretrained weights (needs internet)"),
    "demo": ("demo", "train, serve and query the quickstart models (CPU, about 25 minutes)"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: every command is listed, but only the one ``argv`` names (every
    one when ``argv`` is None) gets its arguments, so only its module is imported."""
    parser = argparse.ArgumentParser(
        prog="cvtasks", description="Computer-vision tasks: serve, train, evaluate and run models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for command, (module, help_) in COMMANDS.items():
        command_parser = sub.add_parser(command, help=help_)
        if named is None or named == command:
            importlib.import_module(f"services.commands.{module}").add_arguments(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError) as exc:  # user errors: say what, no traceback
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cvtasks {args.command}: error: {message}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:  # the server refused: its status and message say what to fix
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"cvtasks {args.command}: server error {code}: {details}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
