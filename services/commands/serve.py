"""``cvtasks serve --task detection --model-store DIR --port N``."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from typing import Any

from services.host import ServingConfig
from services.imaging import GPU_DECODE_MODES
from services.security import ADMIN_TOKENS_ENV, TOKENS_ENV, SecurityConfig, read_tokens
from services.server import MiB, ServerConfig


def _metrics_port(value: str) -> int | None:
    """``--metrics-port`` / ``--health-port``: "" or "off" -> no endpoint; 0 -> any free port; else 1..65535."""
    if value.strip().lower() in ("", "off", "none"):
        return None
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535 (0 = any free port) or 'off', got {value!r}")
    return port


def add_optional_port(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    """``--<flag>``: an endpoint that is off unless a port is given (0 = any free port), by the flag
    or by ``$CVTASKS_<FLAG>``."""
    env = "CVTASKS_" + flag.upper().replace("-", "_")
    text = f"{what} 0 = any free port. Default: ${env}, else off"
    p.add_argument(f"--{flag}", type=_metrics_port, default=os.environ.get(env, "off"), help=text)


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """``--runtime``, ``--precision`` and ``--export-cache`` (models/runtimes.py), each also by
    ``$CVTASKS_<FLAG>``; a model's config.json ``extra.serving`` overrides the first two."""
    from models.runtimes import PRECISIONS, RUNTIMES

    env = os.environ.get
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=env("CVTASKS_RUNTIME", "eager"),
        help="how models run: eager (PyTorch), compiled (torch.compile, inductor) or onnxruntime (the "
        "model's ONNX export; made and checked at load when its folder has none). Default: $CVTASKS_RUNTIME, "
        'else eager; a model\'s config.json "extra": {"serving": {"runtime": ...}} overrides it',
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=env("CVTASKS_PRECISION", "fp32"),
        help="fp32, or autocast to bf16 (CUDA or CPU) or fp16 (CUDA only); eager and compiled only. "
        'Default: $CVTASKS_PRECISION, else fp32; config.json "extra.serving.precision" overrides it',
    )
    p.add_argument(
        "--export-cache",
        default=env("CVTASKS_EXPORT_CACHE", ""),
        help="folder for the ONNX exports onnxruntime makes of models whose folder holds none (keyed by "
        "the weights' hash; default: $CVTASKS_EXPORT_CACHE, else <temp dir>/cvtasks-exports)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    s = ServingConfig()
    p.add_argument(
        "--task",
        action="append",
        required=True,
        help="task to serve (repeat for several): detection, segmentation, captioning, generation, classification",
    )
    p.add_argument("--model-store", default=os.environ.get("CVTASKS_MODEL_STORE", "model_store"))
    p.add_argument("--models", nargs="*", default=(), help="model names to load (default: all of the task)")
    p.add_argument("--default-model", default=None, help="model used when a request names none")
    p.add_argument(
        "--host",
        default="0.0.0.0",
        help="interface to listen on (default every one); LoadModel/UnloadModel are open without admin "
        "tokens only on loopback (127.0.0.1, ::1, localhost)",
    )
    p.add_argument("--port", type=int, default=int(os.environ.get("CVTASKS_PORT", "50051")), help="0 = any free port")
    add_optional_port(
        p,
        "metrics-port",
        "serve Prometheus metrics over HTTP on this port at /metrics (the URL is printed). HTTPS with the "
        "server's certificate when TLS is on; needs a bearer token when tokens are on.",
    )
    p.add_argument(
        "--metrics-host",
        default=os.environ.get("CVTASKS_METRICS_HOST") or None,
        help="interface of the metrics endpoint (default: --host), e.g. 127.0.0.1 to keep it local",
    )
    add_optional_port(
        p,
        "http-port",
        "also serve HTTP/REST on this port of --host, from the same process and models: KServe v2 REST at /v2, "
        "typed routes at /v1/models/NAME/detect etc., a page to try the models at /, the OpenAPI docs at /docs "
        "(the URL is printed). HTTPS when TLS is on; tokens as on gRPC.",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[o.strip() for o in os.environ.get("CVTASKS_CORS_ORIGINS", "").split(",") if o.strip()],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example.com; * for any) call the HTTP port; "
        "repeat for several (also $CVTASKS_CORS_ORIGINS, comma-separated). Default: CORS off",
    )
    add_optional_port(
        p,
        "health-port",
        "also serve the gRPC health service alone, in plaintext, on this port of --host (for probes "
        "without a client certificate under mutual TLS).",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument(
        "--devices",
        type=lambda v: tuple(d.strip() for d in v.split(",") if d.strip()),
        default=(),
        help="one replica of each model per device, e.g. cuda:0,cuda:1 (requests go to the shortest "
        "queue; a GPU this machine lacks falls back to the CPU)",
    )
    add_runtime_arguments(p)
    p.add_argument("--max-batch-size", type=int, default=s.max_batch_size)
    p.add_argument(
        "--max-delay-ms",
        type=float,
        default=s.max_delay_ms,
        help="how long a batch waits to fill (default 0: an idle model runs a request at once, "
        "and what queues while a batch computes forms the next batch)",
    )
    p.add_argument(
        "--overlap",
        action=argparse.BooleanOptionalAction,
        default=s.overlap,
        help="overlapped batches on CUDA (default on): while a batch computes, the next is taken and its "
        "inputs pinned and copied to the device on a stream of their own; --no-overlap: one stage. On the "
        "CPU there is nothing to copy: no stage either way",
    )
    p.add_argument(
        "--max-queue", type=int, default=s.max_queue_size, help="queued requests per model before RESOURCE_EXHAUSTED"
    )
    p.add_argument("--max-pixels", type=int, default=s.max_pixels, help="largest accepted image, in pixels")
    p.add_argument(
        "--max-inflight-pixels",
        type=int,
        default=s.max_inflight_pixels,
        help="decoded pixels a model may hold at once over the requests it has taken on (about 30 "
        "bytes each: the memory ceiling of its images); beyond it requests are refused before "
        "decoding with RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--default-deadline-s",
        type=float,
        default=s.default_deadline_s,
        help="deadline of a unary call whose client set none",
    )
    p.add_argument(
        "--max-deadline-s", type=float, default=s.max_deadline_s, help="longer unary deadlines are cut to this"
    )
    p.add_argument("--max-message-mb", type=float, default=64, help="largest gRPC message, MiB")
    p.add_argument("--decode-workers", type=int, default=s.decode_workers)
    p.add_argument(
        "--gpu-decode",
        choices=GPU_DECODE_MODES,
        default=os.environ.get("CVTASKS_GPU_DECODE", s.gpu_decode),
        help="decode the JPEGs of concurrent requests together on the serving device (nvJPEG through "
        "torchvision); other formats, grayscale/CMYK JPEGs and any failure are decoded on the CPU as "
        "without it. auto: when serving on CUDA; on: on CPU too (for tests). Default: $CVTASKS_GPU_DECODE, else auto",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=None,
        help="RPCs in flight at once over every model (a stream counts once); beyond it new calls get "
        "RESOURCE_EXHAUSTED before their message is read (default: no bound)",
    )
    p.add_argument("--grace-s", type=float, default=10.0, help="time in-flight requests get on SIGTERM")
    env = os.environ.get
    p.add_argument("--tls-cert", default=env("CVTASKS_TLS_CERT"), help="server certificate (PEM): TLS on")
    p.add_argument("--tls-key", default=env("CVTASKS_TLS_KEY"), help="its private key (PEM)")
    p.add_argument(
        "--tls-client-ca",
        default=env("CVTASKS_TLS_CLIENT_CA"),
        help="CA (PEM) that client certificates must chain to: mutual TLS on",
    )
    p.add_argument(
        "--tokens-file",
        default=env("CVTASKS_TOKENS_FILE"),
        help="accepted bearer tokens, one per line (also $CVTASKS_TOKENS, comma-separated); "
        "tokens are never taken on the command line",
    )
    p.add_argument(
        "--admin-tokens-file",
        default=env("CVTASKS_ADMIN_TOKENS_FILE"),
        help="tokens that may also load/unload models (also $CVTASKS_ADMIN_TOKENS)",
    )
    p.add_argument(
        "--open-management",
        action="store_true",
        help="open LoadModel/UnloadModel without admin tokens on every interface: only on a trusted "
        "network (by default they need admin tokens unless --host is loopback)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=_workers(os.environ.get("CVTASKS_WORKERS", "1")),
        help="serving processes sharing the ports (SO_REUSEPORT), each with its own replicas and batchers on "
        "the same device(s); LoadModel/UnloadModel reach every one, health is SERVING when all are, metrics "
        "are summed, a worker that dies is restarted. On CPU each gets cores/N torch threads unless "
        "OMP_NUM_THREADS is set. Default: $CVTASKS_WORKERS, else 1 (one process, no supervisor)",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--plain-logs", action="store_true", help="text logs instead of JSON lines")
    p.set_defaults(run=run)


def _workers(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a number of worker processes >= 1, got {value!r}")
    return count


def configs(args: argparse.Namespace) -> tuple[ServingConfig, ServerConfig]:
    """The serving and server settings ``args`` ask for (tokens read from their files or env)."""
    serving = ServingConfig(
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        overlap=args.overlap,
        max_queue_size=args.max_queue,
        default_deadline_s=args.default_deadline_s,
        max_deadline_s=args.max_deadline_s,
        max_pixels=args.max_pixels,
        max_inflight_pixels=args.max_inflight_pixels,
        device=args.device,
        devices=tuple(args.devices),
        decode_workers=args.decode_workers,
        gpu_decode=args.gpu_decode,
        runtime=args.runtime,
        precision=args.precision,
        export_cache=args.export_cache,
    )
    security = SecurityConfig(
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        tokens=read_tokens(args.tokens_file, env=TOKENS_ENV),
        admin_tokens=read_tokens(args.admin_tokens_file, env=ADMIN_TOKENS_ENV),
        open_management=args.open_management,
    )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        max_message_bytes=int(args.max_message_mb * MiB),
        grace_s=args.grace_s,
        security=security,
        health_port=args.health_port,
        http_port=args.http_port,
        cors_origins=tuple(args.cors_origin),
        max_concurrent_rpcs=args.max_concurrent_rpcs,
    )
    return serving, config


def announcers(args: argparse.Namespace, tls: bool) -> dict[str, Callable[[Any], None]]:
    """What the server prints on stdout once each endpoint is up (``on_ready`` last, once SERVING):
    the lines scripts and tests wait for."""

    def ready(port: int) -> None:
        print(f"cvtasks: serving {', '.join(args.task)} on {args.host}:{port}", flush=True)

    def metrics(url: str) -> None:
        print(f"cvtasks: metrics on {url}", flush=True)

    def http(port: int) -> None:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(args.host, args.host)
        url = f"{'https' if tls else 'http'}://{host}:{port}"
        print(f"cvtasks: HTTP on {url} (a page to try the models at {url}/, docs at /docs)", flush=True)

    def health(port: int) -> None:
        print(f"cvtasks: health on {args.host}:{port} (plaintext, health service only)", flush=True)

    return {"on_ready": ready, "on_metrics": metrics, "on_http": http, "on_health": health}


def run(args: argparse.Namespace) -> int:
    from services.logs import configure_logging

    configure_logging(args.log_level, json_lines=not args.plain_logs)
    if args.workers > 1:
        from services.workers import supervise

        return supervise(args)
    from services.app import build_app, run_app

    serving, config = configs(args)
    app = build_app(args.task, args.model_store, serving, models=args.models, default_model=args.default_model)
    announce = announcers(args, bool(config.security.tls_cert))
    asyncio.run(run_app(app, config, metrics_port=args.metrics_port, metrics_host=args.metrics_host, **announce))
    return 0
