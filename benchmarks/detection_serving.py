"""Raw in-process batched detector vs the gRPC service, measured side by side in one run.

    python benchmarks/detection_serving.py [--model-store DIR --model NAME] [--images N]

Prints images/s for (a) the model called in-process on pre-decoded batches, (b) the service
(`Detect` unary calls from 1, 4 and 16 concurrent clients, encoded PNG bytes in), and the ratio
service / raw for each, then writes benchmarks/results/detection_serving.json. Without
--model-store it stores a randomly initialised quickstart architecture, which costs the same to
run as a trained one up to the number of boxes it keeps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import detector_store  # noqa: E402
from bench_common import RESULTS_DIR, device_name, measure_service, report, synth_png_images  # noqa: E402

from models import checkpoints  # noqa: E402
from models.detection import DetectOptions, predict  # noqa: E402
from models.preprocessing import decode_image, to_tensor  # noqa: E402
from models.train.common import pick_device  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", default=None)
    parser.add_argument("--model", default="quickstart-detector")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="raw batch size = the server's max batch size")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR / "detection_serving.json"))
    args = parser.parse_args()

    device = pick_device(args.device)
    images = synth_png_images(args.images, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        store, name = (Path(args.model_store), args.model) if args.model_store else detector_store(Path(tmp))
        raw = raw_images_per_s(store, name, images, args.batch, device)
        rows = measure_service("detection", store, name, images, lambda cl, d: cl.detect(d), device=device,
                               batch=args.batch)
    header = (f"device: {device_name(device)}; model: {name}; {len(images)} images of {args.size} px; "
              f"batch {args.batch}")
    report("Detect", raw, rows, header, args.out, {"device": device_name(device), "model": name,
                                                   "images": len(images), "image_size": args.size,
                                                   "batch": args.batch})


if __name__ == "__main__":
    main()
