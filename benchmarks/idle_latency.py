"""The batcher's wait, measured: one model served four ways, side by side in one run.

    python benchmarks/idle_latency.py [TASK] [--model-store DIR --model NAME] [--images N]

TASK: detection (default), segmentation, captioning or classification. For each server
configuration, p50/p99 latency and images/s of the task's unary RPC (PNG bytes in) from 1 and
16 concurrent clients:

- ``no wait`` (the default since issue 21): ``--max-delay-ms 0``, batches of up to 8 form from
  what queues while the previous batch computes;
- ``5 ms wait`` (the default before): the first request of a batch waits up to 5 ms for company;
- ``unbatched``: ``--max-batch-size 1``, every request its own forward pass (the unbatched
  server path to compare with);
- the raw model on one pre-decoded image (no server), for scale.

Prints the ratios no wait / unbatched at 1 client (p50) and no wait / 5 ms at 16 clients
(images/s), and writes benchmarks/results/<task>_idle_latency.json. Without --model-store it uses
a randomly initialised model of the quickstart architecture (serving.py's).
"""

from __future__ import annotations

import argparse
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

SERVERS = {
    "no wait": {"max_batch_size": 8, "max_delay_ms": 0.0},
    "5 ms wait": {"max_batch_size": 8, "max_delay_ms": 5.0},
    "unbatched": {"max_batch_size": 1, "max_delay_ms": 0.0},
}


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


def main() -> None:
    from services.client import CvtasksClient
    from services.launch import running_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", nargs="?", default="detection", choices=[t for t in BENCHES if t != "generation"])
    add_model_arguments(parser, images=96)
    args = parser.parse_args()

    bench, device = BENCHES[args.task], pick_device(args.device)
    images = synth_png_images(args.images, args.size)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store, name = (
            (Path(args.model_store), args.model or bench.model) if args.model_store else bench.store(Path(tmp))
        )
        raw_ms = raw_one_image_ms(store, name, images[:32], device)
        for label, serving in SERVERS.items():
            with running_server(task=args.task, model_store=store, models=[name], device=str(device), **serving) as a:
                call = lambda client, data: bench.call(client, data, argparse.Namespace(beam=3, count=1))  # noqa: E731
                rows[label] = {
                    str(c): service_throughput(lambda: CvtasksClient(a, timeout=120), call, images, c) for c in (1, 16)
                }
    ratios = {
        "p50_at_1_client_no_wait_to_unbatched": rows["no wait"]["1"]["p50_ms"] / rows["unbatched"]["1"]["p50_ms"],
        "p50_at_1_client_5ms_wait_to_unbatched": rows["5 ms wait"]["1"]["p50_ms"] / rows["unbatched"]["1"]["p50_ms"],
        "throughput_at_16_no_wait_to_5ms_wait": rows["no wait"]["16"]["images_per_s"]
        / rows["5 ms wait"]["16"]["images_per_s"],
        "throughput_at_16_no_wait_to_unbatched": rows["no wait"]["16"]["images_per_s"]
        / rows["unbatched"]["16"]["images_per_s"],
    }
    print(f"device: {device_name(device)}; model: {name}; {len(images)} images of {args.size} px a measurement")
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
    out = args.out or RESULTS_DIR / f"{args.task}_idle_latency.json"
    write_results(out, {**extra, "raw_one_image_ms": raw_ms, "servers": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
