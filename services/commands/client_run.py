"""What the client commands (``cvtasks detect``, ``segment``, ``caption``, ``classify``) share: image files
over a task's streaming RPC, one row per image (an ``error`` row for a failed one), JSON out."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from models.options import Options
from services.commands.flags import add_option_flags


def add_client_arguments(p: argparse.ArgumentParser, task: str, *, timeout: float) -> None:
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, BMP, TIFF)")
    p.add_argument("--server", default="localhost:50051", help=f"HOST:PORT of `cvtasks serve --task {task}`")
    p.add_argument("--model", default="", help=f"model name (default: the server's default {task} model)")
    p.add_argument("--timeout", type=float, default=timeout, help="seconds for the whole stream")


def add_task_arguments(
    p: argparse.ArgumentParser, task: str, options: type[Options], *, timeout: float, skip: Collection[str] = ()
) -> None:
    """A client command's arguments: the images, the server and model, the task's option flags
    (but ``skip``), and ``--output`` for the JSON rows."""
    add_client_arguments(p, task, timeout=timeout)
    add_option_flags(p, options, skip=skip)
    p.add_argument("--output", default=None, help="write the JSON results to this file too")


def image_paths(args: argparse.Namespace) -> list[str]:
    paths = [str(p) for p in args.images]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file(s): {', '.join(missing)}")
    return paths


def stream_files(args: argparse.Namespace, method: str, options: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(path, response) for each image file, in order, over the client's ``method`` stream."""
    from services.client import CvtasksClient

    paths = image_paths(args)
    with CvtasksClient.from_env(args.server) as client:
        stream = getattr(client, method)
        responses = stream((Path(p).read_bytes() for p in paths), timeout=args.timeout, model=args.model, **options)
        yield from zip(paths, responses)


def run_files(
    args: argparse.Namespace, method: str, options: dict[str, Any], row: Callable[[str, Any], dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Every image through the stream: ``row(path, response)`` for an answer, an error row (and a
    line on stderr) for a failed image. Returns (rows, number failed)."""
    rows, failed = [], 0
    for path, response in stream_files(args, method, options):
        if response.HasField("error"):
            failed += 1
            print(f"{path}: error: {response.error.message}", file=sys.stderr)
            rows.append({"image": path, "error": {"code": response.error.code, "message": response.error.message}})
        else:
            rows.append(row(path, response))
    return rows, failed


def model_of(response: Any) -> dict[str, str]:
    return {"name": response.model.name, "version": response.model.version}


def image_row(path: str, response: Any, *, size: bool = True) -> dict[str, Any]:
    """The fields every image's row starts with: the file, the model and (``size``) the image's size."""
    row = {"image": path, "model": model_of(response)}
    return {**row, "width": response.image_width, "height": response.image_height} if size else row


def timings_ms(
    response: Any, fields: Collection[str] = ("total_ms", "inference_ms"), *, short: bool = True
) -> dict[str, float]:
    """The response's stage timings in ms by field name (``short``: without the ``_ms``)."""
    return {(f.removesuffix("_ms") if short else f): round(getattr(response.timings, f), 2) for f in fields}


def finish(rows: list[dict[str, Any]], failed: int, output: str | None) -> int:
    """Print the rows (and write them to ``output``); the exit status: 1 if an image failed."""
    print_rows(rows, output)
    return 1 if failed else 0


def print_rows(rows: list[dict[str, Any]], output: str | None = None) -> None:
    text = json.dumps(rows, indent=2)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
