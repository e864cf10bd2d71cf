"""Shared by the serving benchmarks: real PNG inputs, client-side throughput, result files."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS_DIR = Path(__file__).parent / "results"


def synth_png_images(n: int, size: int, seed: int = 7) -> list[bytes]:
    """PNG bytes of ``n`` synthetic shapes images (the test split of a fresh dataset)."""
    from models.synth import generate_shapes

    with tempfile.TemporaryDirectory() as tmp:
        generate_shapes(tmp, splits={"test": n}, image_size=size, seed=seed)
        return [p.read_bytes() for p in sorted((Path(tmp) / "images" / "test").glob("*.png"))]


def synth_jpeg_images(n: int, size: int, *, quality: int = 90, seed: int = 7) -> list[bytes]:
    """The images of ``synth_png_images`` as JPEG bytes (what batched GPU decoding takes)."""
    from models.preprocessing import decode_image, encode_image

    return [encode_image(decode_image(png), "jpeg", quality=quality) for png in synth_png_images(n, size, seed)]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` and its live descendants (a server
    and its workers), from /proc (Linux). Take the difference over a measurement."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(entry.name)] = int(fields[1])  # field 4 (ppid), after the name
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0.0) for p in tree)


def service_throughput(
    make_client: Callable[[], Any], call: Callable[[Any, bytes], Any], images: list[bytes], concurrency: int
) -> dict[str, float]:
    """images/s and p50/p99 latency (ms) with ``concurrency`` client threads sharing ``images``."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(part: list[bytes]) -> None:
        with make_client() as client:
            for data in part:
                t = time.perf_counter()
                call(client, data)
                with lock:
                    latencies.append((time.perf_counter() - t) * 1000)

    with make_client() as client:  # warm the connection and the model
        call(client, images[0])
    threads = [threading.Thread(target=worker, args=(images[i::concurrency],)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": len(images) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def add_model_arguments(parser: Any, *, images: int, images_help: str = "requests per measurement") -> None:
    """The flags every serving benchmark takes: the model (a store, else a random one), the
    synthetic PNGs, the device and the results file."""
    parser.add_argument("--model-store", default=None, help="default: a random model of the quickstart architecture")
    parser.add_argument("--model", default=None, help="model name in --model-store (default: the demo's)")
    parser.add_argument("--images", type=int, default=images, help=images_help)
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic PNGs (pixels)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="results JSON (default under benchmarks/results/)")


def compare_detector_paths(
    doc: str, out: str, measure: Callable[..., dict[int, dict]], show: Callable[[dict[int, dict]], None]
) -> None:
    """The driver of the benchmarks that compare request paths on one detector server: parse the
    flags, make the PNGs, store a random detector unless ``--model-store``, run ``measure(store,
    name, images, device=, batch=, concurrencies=)``, print the header and ``show(rows)``, and
    write the rows by concurrency to ``--out`` (default benchmarks/results/<out>)."""
    import argparse

    from bench_models import detector_store

    from models.devices import pick_device

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", default=None)
    parser.add_argument("--model", default="quickstart-detector")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="the server's max batch size")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR / out))
    args = parser.parse_args()
    device = pick_device(args.device)
    images = synth_png_images(args.images, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        store, name = (Path(args.model_store), args.model) if args.model_store else detector_store(Path(tmp))
        rows = measure(store, name, images, device=str(device), batch=args.batch, concurrencies=args.concurrency)
    print(
        f"device: {device_name(device)}; model: {name}; {len(images)} images of {args.size} px, one per "
        f"request; server max batch {args.batch}"
    )
    show(rows)
    run = {"device": device_name(device), "model": name, "images": len(images), "image_size": args.size}
    write_results(args.out, {**run, "batch": args.batch, "by_concurrency": {str(c): r for c, r in rows.items()}})


def write_results(out: str | Path, results: dict[str, Any]) -> Path:
    """``results`` and the time of measuring as JSON at ``out`` (folders made); prints where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {**results, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.write_text(json.dumps(stamped, indent=2) + "\n")
    print(f"results written to {path}")
    return path


def report(
    name: str, raw: float, rows: dict[int, dict[str, float]], header: str, out: str | Path, extra: dict[str, Any]
) -> None:
    """Print raw vs service images/s with ratios, and write them as JSON to ``out``."""
    print(header)
    print(f"raw in-process model          : {raw:8.1f} images/s")
    for concurrency, row in rows.items():
        row["ratio_to_raw"] = row["images_per_s"] / raw
        print(
            f"gRPC {name:9s} concurrency {concurrency:2d} : {row['images_per_s']:8.1f} images/s   "
            f"ratio {row['ratio_to_raw']:.2f}   p50 {row['p50_ms']:.1f} ms   p99 {row['p99_ms']:.1f} ms"
        )
    write_results(out, {**extra, "raw_images_per_s": raw, "service": {str(k): v for k, v in rows.items()}})


def measure_service(
    task: str,
    store: Path,
    name: str,
    images: list[bytes],
    call: Callable[[Any, bytes], Any],
    *,
    device: torch.device,
    batch: int,
    concurrencies: tuple[int, ...] = (1, 4, 16),
    **serving: Any,
) -> dict[int, dict[str, float]]:
    """Serve ``name`` from ``store`` on a free port (max batch ``batch``, and ``serving``: more
    ServingConfig fields, e.g. a runtime) and measure ``call`` from each number of concurrent clients."""
    from services.client import CvtasksClient
    from services.launch import running_server

    with running_server(
        task=task,
        model_store=store,
        models=[name],
        device=str(device),
        max_batch_size=batch,
        ready_timeout_s=1800,
        **serving,
    ) as address:
        return {
            c: service_throughput(lambda: CvtasksClient(address, timeout=120), call, images, c) for c in concurrencies
        }
