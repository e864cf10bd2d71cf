"""The ``cvtasks`` command. Thin: each sub-command lives in services/commands/ and only parses
arguments into the config dataclasses of models/ and services/."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# albumentations checks PyPI for updates at import unless told not to; we are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import grpc  # noqa: E402

from services.commands import (  # noqa: E402
    batch, caption, data, demo, detect, evaluate, generate, manage, segment, serve, train, weights,
)

COMMANDS = (serve, detect, segment, caption, generate, batch, manage, data, train, evaluate, weights, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvtasks", description="Computer-vision tasks: serve, train, evaluate and run models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
