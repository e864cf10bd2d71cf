"""Every serving figure of issue 21 in one run, for a lent GPU (about 6 minutes) or, with
``--quick``, the CPU (about 2 minutes): run it through benchmarks/gpu_suite.sh.

    python benchmarks/gpu_suite.py [--quick] [--tasks detection segmentation] [--workers N]
                                   [--images N] [--size PX] [--out-dir DIR]

For each task, a randomly initialised model of the quickstart architecture (bench_models.py; it
costs what a trained one costs to run, up to the boxes it keeps) and synthetic JPEGs of
``--size`` px, one per request:

- raw: the task's ``run_batch`` alone on pre-decoded inputs, batches of 8 (serving.py), images/s;
- one image: ``run_batch`` on one pre-decoded image (idle_latency.py), ms;
- servers, each the real ``cvtasks serve`` in its own process (workers.py's ``served``), models on
  one device: ``unbatched`` (--max-batch-size 1: the unbatched server path), ``1 worker``,
  ``N workers``, and both again with ``--gpu-decode on`` (batched JPEG decoding on the device;
  on the CPU torchvision's decoder, which only shows the path works);
- each server at 1, 4, 16 and 64 concurrent clients (threads of this process, one connection
  each): images/s, p50/p99 ms, and the server's CPU time per request (user + system seconds of
  its process tree over the measurement / requests).

Ratios: images/s over raw, and over the unbatched server at the same client count; p50 over
the unbatched server's. Writes ``<task>.json`` per task and ``summary.md`` (tables, device, load
average) under benchmarks/results/<device>/ (``nvidia-h200``, ``cpu-quick``, ...).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from math import nan
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import (  # noqa: E402
    RESULTS_DIR,
    device_name,
    service_throughput,
    synth_jpeg_images,
    tree_cpu_seconds,
    write_results,
)
from idle_latency import raw_one_image_ms  # noqa: E402
from serving import BENCHES, raw_images_per_s  # noqa: E402
from workers import served  # noqa: E402

from models.jpeg_batch import decode_jpegs  # noqa: E402

CLIENTS = (1, 4, 16, 64)
BATCH = 8  # the servers' max batch size and the raw model's batch


def servers(workers: int) -> dict[str, tuple[int, list[str]]]:
    """Label -> (worker processes, extra serve flags) of each server measured."""
    return {
        "unbatched": (1, ["--max-batch-size", "1", "--gpu-decode", "off"]),
        "1 worker": (1, ["--max-batch-size", str(BATCH), "--gpu-decode", "off"]),
        f"{workers} workers": (workers, ["--max-batch-size", str(BATCH), "--gpu-decode", "off"]),
        "1 worker, gpu decode": (1, ["--max-batch-size", str(BATCH), "--gpu-decode", "on"]),
        f"{workers} workers, gpu decode": (workers, ["--max-batch-size", str(BATCH), "--gpu-decode", "on"]),
    }


def measure_server(address: Any, task: str, images: list[bytes], clients: tuple[int, ...]) -> dict[str, dict]:
    """Each client count's throughput row, with the server tree's CPU ms per request."""
    from services.client import CvtasksClient

    bench, options = BENCHES[task], [("grpc.use_local_subchannel_pool", 1)]  # a connection per client

    def call(client: Any, data: bytes) -> Any:
        return bench.call(client, data, argparse.Namespace(beam=3, count=1))

    rows = {}
    for count in clients:
        before = tree_cpu_seconds(address.pid)
        row = service_throughput(
            lambda: CvtasksClient(address, timeout=120, channel_options=options), call, images, count
        )
        row["server_cpu_ms_per_request"] = (tree_cpu_seconds(address.pid) - before) * 1000 / (len(images) + 1)
        rows[str(count)] = row
    return rows


def add_ratios(result: dict[str, Any]) -> None:
    """Ratios of every server row to the raw model and to the unbatched server (in place)."""
    unbatched = result["servers"].get("unbatched", {})
    for rows in result["servers"].values():
        for count, row in rows.items():
            row["ratio_to_raw"] = row["images_per_s"] / result["raw_images_per_s"]
            if count in unbatched:
                row["ratio_to_unbatched"] = row["images_per_s"] / unbatched[count]["images_per_s"]
                row["p50_to_unbatched"] = row["p50_ms"] / unbatched[count]["p50_ms"]


def decode_figures(images: list[bytes], device: str) -> dict[str, float]:
    """The batched JPEG decoder (models/jpeg_batch.py) on ``device``, batches of 32, copy to the
    host included, vs the CPU decoder one image at a time: images/s of each, the copy to the host
    alone (ms per image), and the largest differences (the measured tolerance)."""
    import numpy as np
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from models.jpeg_batch import difference
    from models.preprocessing import decode_image
    from services.imaging import MAX_DECODE_BATCH

    parts = [images[i : i + MAX_DECODE_BATCH] for i in range(0, len(images), MAX_DECODE_BATCH)]

    def batched() -> list[np.ndarray]:
        return [a for part in parts for a in decode_jpegs(part, device=device, max_pixels=10**9)]

    batched()  # warm-up (nvJPEG handles, CUDA context)
    start = time.perf_counter()
    decoded = batched()
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = [decode_image(data) for data in images]
    cpu_s = time.perf_counter() - start
    on_device = decode_jpeg(
        [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in parts[0]], mode=ImageReadMode.RGB, device=device
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for chw in on_device:
        chw.permute(1, 2, 0).cpu()
    copy_ms = (time.perf_counter() - start) * 1000 / len(on_device)
    diffs = [difference(a, b) for a, b in zip(decoded, reference, strict=True)]
    return {
        "batched_images_per_s": len(images) / batched_s,
        "cpu_decoder_images_per_s": len(images) / cpu_s,
        "copy_to_host_ms_per_image": copy_ms,
        "max_abs_difference": max(d[0] for d in diffs),
        "p999_abs_difference": max(d[1] for d in diffs),
        "mean_abs_difference": max(d[2] for d in diffs),
    }


def run_task(task: str, args: argparse.Namespace, device: str, clock: float) -> dict[str, Any]:
    """Raw, one image and every server of ``task``; prints progress with the elapsed seconds. A
    server not started before ``args.budget_s`` is left out (said in its place), so the run ends
    in time with what it measured."""
    import torch

    torch.set_num_threads(args.threads)  # the raw model gets the CPU threads each server gets
    bench = BENCHES[task]
    images = synth_jpeg_images(max(args.images, max(CLIENTS)), args.size)
    with tempfile.TemporaryDirectory() as tmp:
        store, name = bench.store(Path(tmp))
        raw_args = argparse.Namespace(batch=BATCH, beam=3, count=1)
        result: dict[str, Any] = {
            "task": task,
            "model": f"{name} (random weights, quickstart architecture)",
            "images": len(images),
            "image_size": args.size,
            "format": "jpeg",
            "device": device,
            "raw_images_per_s": raw_images_per_s(store, name, images, raw_args, torch.device(device)),
            "raw_one_image_ms": raw_one_image_ms(store, name, images[:32], torch.device(device)),
            "decode": decode_figures(images, device),
            "servers": {},
        }
        print(f"[{time.monotonic() - clock:5.0f} s] {task}: raw {result['raw_images_per_s']:.1f} images/s", flush=True)
        for label, (workers, extra) in servers(args.workers).items():
            if time.monotonic() - clock > args.budget_s:
                result.setdefault("left_out", []).append(label)
                print(f"[{time.monotonic() - clock:5.0f} s] {task}: {label} left out (over --budget-s)", flush=True)
                continue
            with served(store, name, task, workers, args.threads, device, extra) as address:
                result["servers"][label] = measure_server(address, task, images, CLIENTS)
            print(f"[{time.monotonic() - clock:5.0f} s] {task}: {label} measured", flush=True)
    add_ratios(result)
    return result


def summary(results: list[dict[str, Any]], header: str) -> str:
    """The markdown page: per task, a row per server and client count."""
    lines = [header, ""]
    for result in results:
        lines += [
            f"## {result['task']}: {result['model']}, {result['images']} JPEGs of {result['image_size']} px",
            "",
            f"raw batched model (batch {BATCH}): {result['raw_images_per_s']:.1f} images/s; "
            f"model on one image: {result['raw_one_image_ms']:.2f} ms",
            "",
            f"JPEG decoding: batched on {result['device']} (copy to host included) "
            f"{result['decode']['batched_images_per_s']:.0f} images/s, CPU decoder (one thread) "
            f"{result['decode']['cpu_decoder_images_per_s']:.0f} images/s; copy to host "
            f"{result['decode']['copy_to_host_ms_per_image']:.3f} ms an image; |batched - CPU| at most "
            f"{result['decode']['max_abs_difference']} levels (99.9th percentile "
            f"{result['decode']['p999_abs_difference']:.1f}, mean {result['decode']['mean_abs_difference']:.3f}, "
            "worst image)",
            "",
            "| server | clients | images/s | p50 ms | p99 ms | server CPU ms/request | / raw | / unbatched "
            "| p50 / unbatched |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, rows in result["servers"].items():
            for count, r in rows.items():
                lines.append(
                    f"| {label} | {count} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                    f"{r['server_cpu_ms_per_request']:.2f} | {r['ratio_to_raw']:.2f} | "
                    f"{r.get('ratio_to_unbatched', nan):.2f} | {r.get('p50_to_unbatched', nan):.2f} |"
                )
        if result.get("left_out"):
            lines += ["", f"Not measured (the run was over its time budget): {', '.join(result['left_out'])}."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU, detection only, 64 images: a minute or two")
    parser.add_argument("--tasks", nargs="+", default=None, choices=["detection", "segmentation", "captioning"])
    parser.add_argument("--workers", type=int, default=None, help="N of the N-worker servers (default 4; quick 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each server process")
    parser.add_argument("--images", type=int, default=None, help="requests per measurement (default 512; quick 64)")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic JPEGs (pixels)")
    parser.add_argument("--device", default=None, help="default: cuda when available; --quick: cpu")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no server after this many seconds")
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results/<device>/")
    args = parser.parse_args()
    device = args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    args.tasks = args.tasks or (["detection"] if args.quick else ["detection", "segmentation"])
    args.workers = args.workers or (2 if args.quick else 4)
    args.images = args.images or (64 if args.quick else 512)
    described = device_name(torch.device(device))
    slug = "cpu-quick" if args.quick else re.sub(r"[^a-z0-9]+", "-", described.lower()).strip("-")
    out = Path(args.out_dir) if args.out_dir else RESULTS_DIR / slug
    clock = time.monotonic()
    load_before = os.getloadavg()
    results = [run_task(task, args, device, clock) for task in args.tasks]
    elapsed, load_after = time.monotonic() - clock, os.getloadavg()
    header = (
        f"# Serving suite on {described} ({os.cpu_count()} cores)\n\n"
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} by `benchmarks/gpu_suite.py{' --quick' if args.quick else ''}` "
        f"in {elapsed:.0f} s; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (the clients "
        f"share the machine with the servers). Servers: max batch {BATCH}, {args.threads} torch thread(s) each, "
        f"models on {device}; gpu decode on {device}."
    )
    for result in results:
        meta = {"device": described, "load_average": [load_before, load_after], "seconds": elapsed}
        write_results(out / f"{result['task']}.json", {**meta, **result})
    page = summary(results, header)
    (out / "summary.md").write_text(page + "\n")
    print(page)
    print(f"summary written to {out / 'summary.md'}")


if __name__ == "__main__":
    main()
