"""Raw in-process DCGAN generator vs the gRPC service, measured side by side in one run.

    python benchmarks/generation_serving.py [--model-store DIR --model NAME] [--images N]

Raw: the generator on latents drawn from seeds, --batch images per forward pass, uint8 pixels
back on the CPU. Service: `Generate` unary calls of --count images each (PNG back) from 1, 4 and
16 concurrent clients; the server runs each request as its own forward pass (so a seed's bytes
never depend on other traffic), so batching across requests does not help here. Without
--model-store a 64 px DCGAN with random weights is used (the work is the same as a trained
one's). Writes benchmarks/results/generation_serving.json.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import generator_store  # noqa: E402
from bench_common import RESULTS_DIR, device_name, measure_service, report  # noqa: E402

from models import checkpoints  # noqa: E402
from models.generation import to_uint8  # noqa: E402
from models.train.common import pick_device  # noqa: E402


def raw_images_per_s(store: Path, name: str, images: int, batch: int, device: torch.device) -> float:
    model, _ = checkpoints.load_model(store / name, device=device)
    model.eval()
    with torch.inference_mode():
        to_uint8(model(model.prior.sample(0, batch).to(device)))  # warm-up
        start = time.perf_counter()
        for seed in range(0, images, batch):  # the latents drawn as the service draws them
            to_uint8(model(model.prior.sample(seed, min(batch, images - seed)).to(device)))
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", default=None)
    parser.add_argument("--model", default="quickstart-generator")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64, help="image side of the random-weights generator")
    parser.add_argument("--count", type=int, default=8, help="images per Generate call")
    parser.add_argument("--batch", type=int, default=8, help="raw images per forward pass")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR / "generation_serving.json"))
    args = parser.parse_args()

    device = pick_device(args.device)
    seeds = itertools.count()
    calls = [b""] * max(1, args.images // args.count)  # one entry per Generate call
    with tempfile.TemporaryDirectory() as tmp:
        store, name = (Path(args.model_store), args.model) if args.model_store else generator_store(Path(tmp), args.size)
        raw = raw_images_per_s(store, name, len(calls) * args.count, args.batch, device)
        rows = measure_service("generation", store, name, calls,
                               lambda cl, _: cl.generate(count=args.count, seed=next(seeds)), device=device,
                               batch=args.batch)
    for row in rows.values():  # measure_service counts calls; each call returns --count images
        row["images_per_s"] *= args.count
    header = (f"device: {device_name(device)}; model: {name}; {len(calls) * args.count} images; "
              f"{args.count} per call; raw batch {args.batch}")
    report("Generate", raw, rows, header, args.out, {"device": device_name(device), "model": name,
                                                     "images": len(calls) * args.count, "count": args.count,
                                                     "batch": args.batch})


if __name__ == "__main__":
    main()
