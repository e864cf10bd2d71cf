"""``cvtasks serve --task detection --model-store DIR --port N``."""

from __future__ import annotations

import argparse
import asyncio
import os

from services.host import ServingConfig
from services.server import MiB, ServerConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = ServingConfig()
    p = sub.add_parser("serve", help="serve models of one or more tasks over gRPC")
    p.add_argument("--task", action="append", required=True, help="task to serve (repeat for several): detection, segmentation, captioning, generation")
    p.add_argument("--model-store", default=os.environ.get("CVTASKS_MODEL_STORE", "model_store"))
    p.add_argument("--models", nargs="*", default=(), help="model names to load (default: all of the task)")
    p.add_argument("--default-model", default=None, help="model used when a request names none")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=int(os.environ.get("CVTASKS_PORT", "50051")), help="0 = any free port")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--max-batch-size", type=int, default=s.max_batch_size)
    p.add_argument("--max-delay-ms", type=float, default=s.max_delay_ms, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=int, default=s.max_queue_size, help="queued requests per model before RESOURCE_EXHAUSTED")
    p.add_argument("--max-pixels", type=int, default=s.max_pixels, help="largest accepted image, in pixels")
    p.add_argument("--max-message-mb", type=float, default=64, help="largest gRPC message, MiB")
    p.add_argument("--decode-workers", type=int, default=s.decode_workers)
    p.add_argument("--grace-s", type=float, default=10.0, help="time in-flight requests get on SIGTERM")
    p.add_argument("--log-level", default="info")
    p.add_argument("--plain-logs", action="store_true", help="text logs instead of JSON lines")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from services.app import build_app, run_app
    from services.logs import configure_logging

    configure_logging(args.log_level, json_lines=not args.plain_logs)
    serving = ServingConfig(
        max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms, max_queue_size=args.max_queue,
        max_pixels=args.max_pixels, device=args.device, decode_workers=args.decode_workers,
    )
    config = ServerConfig(host=args.host, port=args.port, max_message_bytes=int(args.max_message_mb * MiB),
                          grace_s=args.grace_s)
    app = build_app(args.task, args.model_store, serving, models=args.models, default_model=args.default_model)

    def ready(port: int) -> None:
        print(f"cvtasks: serving {', '.join(args.task)} on {args.host}:{port}", flush=True)

    asyncio.run(run_app(app, config, on_ready=ready))
    return 0
