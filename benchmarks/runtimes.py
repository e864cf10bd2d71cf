"""Raw and served throughput per runtime and precision (models/runtimes.py), side by side in one run.

    python benchmarks/runtimes.py [--tasks classification segmentation detection captioning]
                                  [--runtimes eager compiled onnxruntime] [--precisions fp32 bf16]
                                  [--rounds 3] [--images 96] [--concurrency 1 16]

Raw: the task's own ``run_batch`` (benchmarks/serving.py ``raw_timer``: pre-decoded inputs, batches
of --batch) on the model as ``serve_with`` sets it up, for each runtime x precision (onnxruntime at
fp32 only), plus eager and compiled with channels-last convolutions. Every variant is set up first
(compiled, exported), then timed in --rounds interleaved rounds; the median is kept, so a machine
loaded by other work skews every variant alike. Served: the gRPC service, one server per runtime
at fp32 (``--runtime``), at each --concurrency. Prints images/s with the ratio to eager fp32 and
writes benchmarks/results/runtimes.json. Without --model-store each task gets a random model of
its quickstart architecture (benchmarks/bench_models.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import (  # noqa: E402
    RESULTS_DIR,
    add_model_arguments,
    device_name,
    synth_png_images,
    write_results,
)
from serving import BENCHES, measure_task_service, raw_timer  # noqa: E402

from models.devices import pick_device  # noqa: E402
from models.runtimes import (  # noqa: E402
    PRECISIONS,
    RUNTIMES,
    RuntimeChoice,
    check_device,
    check_task,
    runtimes_for,
    serve_with,
)


def variants(args: argparse.Namespace, task: str, device: torch.device) -> list[tuple[str, RuntimeChoice, bool]]:
    """(label, choice, channels-last) of every raw variant this task and device can run."""
    found = []
    for runtime in (r for r in args.runtimes if r in runtimes_for(task)):
        for precision in args.precisions:
            choice = RuntimeChoice(runtime, precision)
            try:
                check_device(choice, device)
                check_task(task, choice)  # detectors and captioners: fp32 only
            except ValueError:
                continue
            found.append((f"{runtime} {precision}", choice, False))
            if runtime != "onnxruntime" and precision == "fp32" and args.channels_last:
                found.append((f"{runtime} {precision} channels-last", choice, True))
    return found


def measure_raw(args, task, store, name, images, device, cache) -> dict[str, float]:
    """Label -> median images/s over the rounds."""
    timers = {}
    for label, choice, channels_last in variants(args, task, device):
        print(f"  setting up {label} ...", flush=True)

        def setup(model: torch.nn.Module, config: Any, choice=choice, channels_last=channels_last) -> None:
            serve_with(model, config, store / name, device, choice, cache=cache, channels_last=channels_last)

        timers[label] = raw_timer(store, name, images, args, device, setup)
    runs: dict[str, list[float]] = {label: [] for label in timers}
    for _ in range(args.rounds):
        for label, timer in timers.items():
            runs[label].append(timer())
    return {label: statistics.median(values) for label, values in runs.items()}


def measure_served(args, task, store, name, images, device, cache) -> dict[str, dict[int, dict[str, float]]]:
    """Runtime -> concurrency -> the service's images/s and latency, at fp32."""
    served: dict[str, dict[int, dict[str, float]]] = {}
    for runtime in (r for r in args.runtimes if r in runtimes_for(task)):
        print(f"  serving with {runtime} ...", flush=True)
        served[runtime] = measure_task_service(
            args,
            task,
            store,
            name,
            images,
            device,
            concurrencies=tuple(args.concurrency),
            runtime=runtime,
            export_cache=str(cache),
        )
    return served


def show(task: str, raw: dict[str, float], served: dict[str, dict[int, dict[str, float]]]) -> None:
    base = raw["eager fp32"]
    print(f"{task}: raw model (run_batch, batches of 8)")
    for label, value in raw.items():
        print(f"  {label:28s} {value:8.1f} images/s   x{value / base:.2f}")
    for concurrency in next(iter(served.values()), {}):
        base = served["eager"][concurrency]["images_per_s"]
        print(f"{task}: served, {concurrency} client(s)")
        for runtime, rows in served.items():
            row = rows[concurrency]
            print(
                f"  {runtime:28s} {row['images_per_s']:8.1f} images/s   x{row['images_per_s'] / base:.2f}   "
                f"p50 {row['p50_ms']:.1f} ms   p99 {row['p99_ms']:.1f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = ["classification", "segmentation", "detection", "captioning"]
    parser.add_argument("--tasks", nargs="+", default=tasks, choices=sorted(BENCHES))
    add_model_arguments(parser, images=96)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the raw timings")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--batch", type=int, default=8, help="raw batch size = the server's max batch size")
    parser.add_argument("--beam", type=int, default=3, help="captioning: beam size")
    parser.add_argument("--count", type=int, default=8, help="generation: images per Generate call")
    args = parser.parse_args()

    device = pick_device(args.device)
    images = synth_png_images(args.images, args.size)
    results: dict[str, Any] = {"device": device_name(device), "images": len(images), "image_size": args.size}
    results["load_average_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            root, cache = Path(tmp) / task, Path(tmp) / f"{task}-exports"
            root.mkdir()
            store, name = (
                (Path(args.model_store), args.model or BENCHES[task].model)
                if args.model_store
                else BENCHES[task].store(root)
            )
            print(f"{task}: {name} on {device_name(device)}", flush=True)
            raw = measure_raw(args, task, store, name, images, device, cache)
            served = measure_served(args, task, store, name, images, device, cache)
            show(task, raw, served)
            results[task] = {
                "model": name,
                "raw_images_per_s": raw,
                "raw_ratio_to_eager": {k: v / raw["eager fp32"] for k, v in raw.items()},
                "served": {r: {str(c): row for c, row in rows.items()} for r, rows in served.items()},
            }
    results["batch"], results["rounds"] = args.batch, args.rounds
    results["load_average_after"] = os.getloadavg()  # the machine is shared: other work skews every variant
    write_results(args.out or RESULTS_DIR / "runtimes.json", results)


if __name__ == "__main__":
    main()
