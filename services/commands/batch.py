"""``cvtasks batch TASK INPUT --out OUT``: a folder of images through a model, results on disk.

    cvtasks batch detection photos/ --out results/ --recursive --annotate
    cvtasks batch segmentation scans/ --out masks/ --server localhost:50051
    cvtasks batch captioning frames/ --out captions/ --engine ray
    cvtasks batch classification photos/ --out labels/ --top-k 3
    cvtasks batch generate --count 1000 --out samples/

Re-running the same command skips the inputs already done (see models/batch/store.py);
``--force`` starts over. Exit code 0: all done; 1: some inputs failed (listed in errors.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from models.batch.store import IMAGE_PATTERNS
from models.options import TASK_OPTIONS
from models.preprocessing import DEFAULT_MAX_PIXELS
from services.commands.flags import add_option_flags, options_from_args

IMAGE_TASKS = ("detection", "segmentation", "captioning", "classification")
MAX_COUNT = 1_000_000  # generate: 1e6 latents of nz 100 hold 400 MB


def add_arguments(p: argparse.ArgumentParser) -> None:
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    for task in IMAGE_TASKS:
        t = tasks.add_parser(task, help=f"{task} over a folder of images")
        t.add_argument("input", help="folder of images (or one image file)")
        t.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
        t.add_argument(
            "--glob",
            nargs="+",
            default=list(IMAGE_PATTERNS),
            metavar="PATTERN",
            help="file name patterns to take, case-insensitive (default: common image extensions)",
        )
        t.add_argument(
            "--decode-workers",
            type=int,
            default=max(1, min(4, os.cpu_count() or 1)),
            help="threads reading and decoding images",
        )
        t.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are refused")
        t.add_argument(
            "--engine",
            choices=("local", "ray"),
            default="local",
            help="local pipelined engine, or Ray Data (a cluster via RAY_ADDRESS, else local Ray)",
        )
        t.add_argument("--actors", type=int, default=1, help="Ray engine: model replicas (actors)")
        _common(t)
        add_option_flags(t, TASK_OPTIONS[task])
    g = tasks.add_parser("generate", aliases=["generation"], help="draw COUNT images from a generator")
    g.add_argument("--count", type=int, required=True, help="images 0..COUNT-1 of the seed")
    add_option_flags(g, TASK_OPTIONS["generation"], skip={"count"})  # --count here is the job's
    _common(g)
    p.set_defaults(run=run)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (results, manifest, errors)")
    p.add_argument("--model", default="", help="model name (default: the only/first model of the task)")
    p.add_argument("--model-store", default=os.environ.get("CVTASKS_MODEL_STORE", "model_store"))
    p.add_argument("--server", default=None, help="HOST:PORT of a running service: it does the inference")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="images held at once (default 4 x batch size; remote: unanswered requests, default 32)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument(
        "--retry-s",
        type=float,
        default=60.0,
        help="remote: keep retrying an unavailable server this long without progress",
    )
    p.add_argument("--force", action="store_true", help="start over: reprocess inputs already done")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when not a terminal)")


def run(args: argparse.Namespace) -> int:
    task_name = "generation" if args.task in ("generate", "generation") else args.task
    options = options_from_args(args, TASK_OPTIONS[task_name])
    options.pop("count", None)  # the job's --count, not a request's
    if task_name == "generation" and not 1 <= args.count <= MAX_COUNT:
        raise ValueError(
            f"--count must be in 1..{MAX_COUNT}, got {args.count} (the seed's latents are held "
            f"in memory; use several seeds for more)"
        )
    if args.server:
        summary = _run_remote(args, task_name, options)
    else:
        summary = _run_in_process(args, task_name, options)
    print(json.dumps(summary.to_json(), indent=2))
    print(summary.text(), file=sys.stderr)
    return 1 if summary.failed else 0


def _inputs(args: argparse.Namespace) -> list:
    from models.batch.store import list_inputs

    inputs = list_inputs(args.input, patterns=args.glob, recursive=args.recursive, exclude=[args.out])
    if not inputs:
        raise FileNotFoundError(
            f"no files matching {' '.join(args.glob)} in {args.input}"
            f"{'' if args.recursive else ' (add --recursive for sub-folders)'}"
        )
    return inputs


def _run_in_process(args: argparse.Namespace, task_name: str, options: dict[str, Any]):
    from models import checkpoints
    from models.batch.engine import file_work, index_work, run_local
    from models.batch.job import build_job
    from models.batch.store import Manifest
    from models.train.common import pick_device

    folder = _model_folder(args.model_store, task_name, args.model)
    config = checkpoints.load_config(folder)
    max_pixels = getattr(args, "max_pixels", DEFAULT_MAX_PIXELS)
    task = build_job(task_name, config, args.out, max_pixels=max_pixels, **options)
    inputs = _inputs(args) if task_name != "generation" else []
    manifest = Manifest(args.out, task.job(), force=args.force)
    if getattr(args, "engine", "local") == "ray":
        from models.batch.ray_engine import run_ray

        return run_ray(
            task,
            folder,
            inputs,
            manifest,
            batch_size=args.batch_size,
            actors=args.actors,
            device=args.device,
            progress=not args.no_progress,
        )
    model, _ = checkpoints.load_model(folder, device=pick_device(args.device))
    work = file_work(task, inputs) if task.task.takes_images else index_work(task, args.count)
    return run_local(
        task,
        model,
        work,
        manifest,
        batch_size=args.batch_size,
        decode_workers=getattr(args, "decode_workers", 1),
        max_in_flight=args.max_in_flight,
        progress=not args.no_progress,
    )


def _model_folder(store: str, task: str, name: str) -> Path:
    """The named model, or the task's only (or first, by name) model in the store."""
    from models import checkpoints

    if name:
        return checkpoints.resolve(store, name)
    found = sorted(c.name for c in checkpoints.list_store(store) if c.task == task)
    if not found:
        raise FileNotFoundError(
            f"no {task} model in model store {store}; train one (cvtasks train {task} ...) "
            f"or pass --model-store / --server"
        )
    return checkpoints.resolve(store, found[0])


def _run_remote(args: argparse.Namespace, task_name: str, options: dict[str, Any]):
    from models.batch.job import build_job
    from models.batch.store import Manifest
    from services.batch_remote import remote_config, run_remote, run_remote_generate
    from services.client import CvtasksClient

    if getattr(args, "engine", "local") != "local":
        raise ValueError("--server and --engine ray exclude each other: the server already does the inference")
    reconnect = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 2000)]
    with CvtasksClient.from_env(args.server, timeout=60.0, channel_options=reconnect) as client:
        config = remote_config(client, task_name, args.model)
        max_pixels = getattr(args, "max_pixels", DEFAULT_MAX_PIXELS)
        task = build_job(task_name, config, args.out, max_pixels=max_pixels, **options)
        manifest = Manifest(args.out, task.job(), force=args.force)
        if task_name == "generation":
            return run_remote_generate(
                task, client, args.count, manifest, retry_s=args.retry_s, progress=not args.no_progress
            )
        return run_remote(
            task,
            client,
            _inputs(args),
            manifest,
            in_flight=args.max_in_flight or 32,
            retry_s=args.retry_s,
            progress=not args.no_progress,
        )
