"""``cvtasks caption IMAGE... --server HOST:PORT``: captions over gRPC, printed and saved as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from models.options import CaptionOptions
from services.commands.client_run import add_task_arguments, finish, image_row, run_files, timings_ms
from services.commands.flags import options_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_task_arguments(p, "captioning", CaptionOptions, timeout=60.0)
    p.set_defaults(run=run)


def response_to_json(path: str, response: Any) -> dict[str, Any]:
    from models.captioning import caption_row
    from services.captioning import CaptioningServicer

    captions = caption_row(CaptioningServicer.output_of(response))["captions"]
    return {**image_row(path, response, size=False), "captions": captions, "timings_ms": timings_ms(response)}


def run(args: argparse.Namespace) -> int:
    def row(path: str, response: Any) -> dict[str, Any]:
        found = response_to_json(path, response)
        print(f"{path}: {found['captions'][0]['text']}", file=sys.stderr)
        return found

    return finish(*run_files(args, "caption_stream", options_from_args(args, CaptionOptions), row), args.output)
