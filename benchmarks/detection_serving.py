"""Raw in-process batched detector vs the gRPC service, measured side by side in one run.

    python benchmarks/detection_serving.py [--model-store DIR --model NAME] [--images N]

Prints images/s for (a) the model called in-process on pre-decoded batches, (b) the service
(`Detect` unary calls from 1, 4 and 16 concurrent clients, encoded PNG bytes in), and the ratio
service / raw for each, then writes benchmarks/results/detection_serving.json. Without
--model-store it trains nothing: it stores a randomly initialised quickstart architecture, which
costs the same to run as a trained one up to the number of boxes it keeps.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from models import checkpoints
from models.detection import DetectOptions, build_detector, predict
from models.preprocessing import decode_image, to_tensor
from models.train.common import pick_device

RESULTS = Path(__file__).parent / "results" / "detection_serving.json"


def _images(n: int, size: int, seed: int) -> list[bytes]:
    """Real PNG bytes of the synthetic shapes test split."""
    from models.synth import generate_shapes

    with tempfile.TemporaryDirectory() as tmp:
        generate_shapes(tmp, splits={"test": n}, image_size=size, seed=seed)
        return [p.read_bytes() for p in sorted((Path(tmp) / "images" / "test").glob("*.png"))]


def _random_store(root: Path) -> tuple[Path, str]:
    torch.manual_seed(0)
    model = build_detector("fasterrcnn_tiny", num_classes=4)
    config = checkpoints.ModelConfig(name="bench-detector", task="detection", architecture="fasterrcnn_tiny",
                                     classes=("circle", "square", "triangle"), input_size=128)
    checkpoints.save_model(model, config, root / config.name)
    return root, config.name


def raw_images_per_s(store: Path, name: str, images: list[bytes], batch: int, device: torch.device) -> float:
    model, config = checkpoints.load_model(store / name, device=device)
    tensors = [to_tensor(decode_image(b)).to(device) for b in images]  # pre-decoded: model only
    predict(model, tensors[:batch], class_names=config.classes)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(tensors), batch):
        predict(model, tensors[i:i + batch], class_names=config.classes, options=DetectOptions())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(tensors) / (time.perf_counter() - start)


def service_images_per_s(address: str, images: list[bytes], concurrency: int) -> tuple[float, float, float]:
    """images/s and p50/p99 latency (ms) with ``concurrency`` client threads sharing the images."""
    from services.client import CvtasksClient

    latencies: list[float] = []
    lock = threading.Lock()

    def worker(part: list[bytes]) -> None:
        with CvtasksClient(address, timeout=60) as client:
            for data in part:
                t = time.perf_counter()
                client.detect(data)
                with lock:
                    latencies.append((time.perf_counter() - t) * 1000)

    with CvtasksClient(address, timeout=60) as client:  # warm the connection and the model
        client.detect(images[0])
    threads = [threading.Thread(target=worker, args=(images[i::concurrency],)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return len(images) / elapsed, float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", default=None)
    parser.add_argument("--model", default="quickstart-detector")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="raw batch size = the server's max batch size")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from services.launch import running_server

    device = pick_device(args.device)
    images = _images(args.images, args.size, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        store, name = (Path(args.model_store), args.model) if args.model_store else _random_store(Path(tmp))
        raw = raw_images_per_s(store, name, images, args.batch, device)
        rows = {}
        with running_server(task="detection", model_store=store, models=[name], device=str(device),
                            max_batch_size=args.batch) as address:
            for concurrency in (1, 4, 16):
                ips, p50, p99 = service_images_per_s(address, images, concurrency)
                rows[concurrency] = {"images_per_s": ips, "ratio_to_raw": ips / raw, "p50_ms": p50, "p99_ms": p99}

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {device_name}; model: {name}; {len(images)} images of {args.size} px; batch {args.batch}")
    print(f"raw in-process batched model : {raw:8.1f} images/s")
    for concurrency, row in rows.items():
        print(f"gRPC Detect, concurrency {concurrency:2d} : {row['images_per_s']:8.1f} images/s   "
              f"ratio {row['ratio_to_raw']:.2f}   p50 {row['p50_ms']:.1f} ms   p99 {row['p99_ms']:.1f} ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": device_name, "model": name, "images": len(images), "image_size": args.size, "batch": args.batch,
        "raw_images_per_s": raw, "service": {str(k): v for k, v in rows.items()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2) + "\n")
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
