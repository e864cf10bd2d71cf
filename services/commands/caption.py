"""``cvtasks caption IMAGE... --server HOST:PORT``: captions over gRPC, printed and saved as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from models.options import CaptionOptions
from services.commands.client_run import add_client_arguments, model_of, print_rows, run_files
from services.commands.flags import add_option_flags, options_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_client_arguments(p, "captioning", timeout=60.0)
    add_option_flags(p, CaptionOptions)
    p.add_argument("--output", default=None, help="write the JSON results to this file too")
    p.set_defaults(run=run)


def response_to_json(path: str, response: Any) -> dict[str, Any]:
    from models.captioning import caption_row
    from services.captioning import CaptioningServicer

    captions = caption_row(CaptioningServicer.output_of(response))["captions"]
    return {
        "image": path,
        "model": model_of(response),
        "captions": captions,
        "timings_ms": {
            "total": round(response.timings.total_ms, 2),
            "inference": round(response.timings.inference_ms, 2),
        },
    }


def run(args: argparse.Namespace) -> int:
    def row(path: str, response: Any) -> dict[str, Any]:
        found = response_to_json(path, response)
        print(f"{path}: {found['captions'][0]['text']}", file=sys.stderr)
        return found

    rows, failed = run_files(args, "caption_stream", options_from_args(args, CaptionOptions), row)
    print_rows(rows, args.output)
    return 1 if failed else 0
