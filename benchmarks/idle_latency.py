"""The batcher's policies, measured: one model served several ways, side by side in one run.

    python benchmarks/idle_latency.py [TASK] [--compare wait|overlap] [--rounds R]
        [--model-store DIR --model NAME] [--images N]

TASK: detection (default), segmentation, captioning or classification. For each server
configuration, p50/p99 latency and images/s of the task's unary RPC (PNG bytes in) from 1 and
16 concurrent clients. ``--compare wait`` (the default):

- ``no wait`` (the default since issue 21): ``--max-delay-ms 0``, batches of up to 8 form from
  what queues while the previous batch computes;
- ``5 ms wait`` (the default before): the first request of a batch waits up to 5 ms for company;
- ``unbatched``: ``--max-batch-size 1``, every request its own forward pass (the unbatched
  server path to compare with);

``--compare overlap``: ``overlapped`` (``--overlap``, the default: the next batch is taken and
its inputs copied to the GPU while one computes) against ``one stage`` (``--no-overlap``); on
the CPU both run one stage (nothing to copy), so there the ratios show the noise floor.
Both print the raw model on one pre-decoded image (no server), for scale, and the ratios named
in COMPARISONS. With ``--rounds`` R > 1 the servers take turns R times and each figure is the
median of its rounds (a loaded machine drifts). The load average is recorded. Writes
benchmarks/results/<task>_idle_latency.json (wait) or <task>_overlap.json. Without
--model-store it uses a randomly initialised model of the quickstart architecture (serving.py's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import (  # noqa: E402
    RESULTS_DIR,
    add_model_arguments,
    device_name,
    service_throughput,
    synth_png_images,
    write_results,
)
from serving import BENCHES  # noqa: E402

from models import checkpoints  # noqa: E402
from models.devices import pick_device  # noqa: E402
from models.preprocessing import decode_image  # noqa: E402
from models.tasks import get_task  # noqa: E402

# compared -> (server label -> serving settings, ratio name -> (server, over server, clients, figure))
COMPARISONS: dict[str, tuple[dict[str, dict], dict[str, tuple[str, str, str, str]]]] = {
    "wait": (
        {
            "no wait": {"max_batch_size": 8, "max_delay_ms": 0.0},
            "5 ms wait": {"max_batch_size": 8, "max_delay_ms": 5.0},
            "unbatched": {"max_batch_size": 1, "max_delay_ms": 0.0},
        },
        {
            "p50_at_1_client_no_wait_to_unbatched": ("no wait", "unbatched", "1", "p50_ms"),
            "p50_at_1_client_5ms_wait_to_unbatched": ("5 ms wait", "unbatched", "1", "p50_ms"),
            "throughput_at_16_no_wait_to_5ms_wait": ("no wait", "5 ms wait", "16", "images_per_s"),
            "throughput_at_16_no_wait_to_unbatched": ("no wait", "unbatched", "16", "images_per_s"),
        },
    ),
    "overlap": (
        {"overlapped": {"overlap": True}, "one stage": {"overlap": False}},
        {
            "p50_at_1_client_overlapped_to_one_stage": ("overlapped", "one stage", "1", "p50_ms"),
            "throughput_at_1_overlapped_to_one_stage": ("overlapped", "one stage", "1", "images_per_s"),
            "p50_at_16_clients_overlapped_to_one_stage": ("overlapped", "one stage", "16", "p50_ms"),
            "throughput_at_16_overlapped_to_one_stage": ("overlapped", "one stage", "16", "images_per_s"),
        },
    ),
}
RESULTS_NAME = {"wait": "idle_latency", "overlap": "overlap"}


def raw_one_image_ms(store: Path, name: str, images: list[bytes], device: torch.device) -> float:
    """Median ms of the task's run_batch on one pre-decoded image (no server)."""
    model, config = checkpoints.load_model(store / name, device=device)
    task = get_task(config.task)
    options = task.options(config, {})
    inputs = [task.model_input(decode_image(b), config) for b in images]
    times = []
    with torch.inference_mode():
        task.run_batch(model, config, inputs[:1], [options])  # warm-up
        for x in inputs:
            start = time.perf_counter()
            task.run_batch(model, config, [x], [options])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_servers(args: argparse.Namespace, store: Path, name: str, images: list[bytes], servers: dict) -> dict:
    """server label -> clients ("1", "16") -> images/s, p50_ms, p99_ms: the median of ``args.rounds``
    turns, the servers taking turns within each."""
    from services.client import CvtasksClient
    from services.launch import running_server

    bench, device = BENCHES[args.task], pick_device(args.device)
    call = lambda client, data: bench.call(client, data, argparse.Namespace(beam=3, count=1))  # noqa: E731
    runs: dict[str, list[dict[str, dict[str, float]]]] = {label: [] for label in servers}
    for _ in range(args.rounds):
        for label, serving in servers.items():
            with running_server(task=args.task, model_store=store, models=[name], device=str(device), **serving) as a:
                runs[label].append(
                    {
                        str(c): service_throughput(lambda: CvtasksClient(a, timeout=120), call, images, c)
                        for c in (1, 16)
                    }
                )
    return {
        label: {c: {k: statistics.median(r[c][k] for r in rounds) for k in rounds[0][c]} for c in rounds[0]}
        for label, rounds in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", nargs="?", default="detection", choices=[t for t in BENCHES if t != "generation"])
    parser.add_argument("--compare", choices=list(COMPARISONS), default="wait")
    parser.add_argument("--rounds", type=int, default=1, help="turns of every server; figures are medians")
    add_model_arguments(parser, images=96)
    args = parser.parse_args()

    bench, device = BENCHES[args.task], pick_device(args.device)
    servers, ratio_of = COMPARISONS[args.compare]
    images = synth_png_images(args.images, args.size)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        store, name = (
            (Path(args.model_store), args.model or bench.model) if args.model_store else bench.store(Path(tmp))
        )
        raw_ms = raw_one_image_ms(store, name, images[:32], device)
        rows = measure_servers(args, store, name, images, servers)
    load = {"before": load_before, "after": os.getloadavg()}
    ratios = {key: rows[a][c][m] / rows[b][c][m] for key, (a, b, c, m) in ratio_of.items()}
    print(f"device: {device_name(device)}; model: {name}; {len(images)} images of {args.size} px a measurement")
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}; rounds: {args.rounds}")
    if args.compare == "overlap" and device.type != "cuda":
        print("note: on the CPU --overlap has nothing to copy, so both servers run one stage (a noise floor)")
    print(f"raw model, one image: {raw_ms:.1f} ms")
    print(f"{'server':12s} {'1 client p50':>13s} {'p99':>8s}   {'16 clients img/s':>16s} {'p50':>8s}")
    for label, row in rows.items():
        one, many = row["1"], row["16"]
        print(
            f"{label:12s} {one['p50_ms']:10.1f} ms {one['p99_ms']:5.1f} ms   "
            f"{many['images_per_s']:16.1f} {many['p50_ms']:5.1f} ms"
        )
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    extra = {"device": device_name(device), "model": name, "images": len(images), "image_size": args.size}
    extra |= {"rounds": args.rounds, "load_average": load}
    out = args.out or RESULTS_DIR / f"{args.task}_{RESULTS_NAME[args.compare]}.json"
    write_results(out, {**extra, "raw_one_image_ms": raw_ms, "servers": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
