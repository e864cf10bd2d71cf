"""Raw in-process segmenter vs the gRPC service, measured side by side in one run.

    python benchmarks/segmentation_serving.py [--model-store DIR --model NAME] [--images N]

Raw: the model on pre-decoded tensors in batches of --batch (the server's max batch size),
label maps back to the CPU. Service: `Segment` unary calls (label map PNG back, no overlay) from 1, 4 and 16
concurrent clients. Writes benchmarks/results/segmentation_serving.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import segmenter_store  # noqa: E402
from bench_common import RESULTS_DIR, device_name, measure_service, report, synth_png_images  # noqa: E402

from models import checkpoints  # noqa: E402
from models.preprocessing import decode_image, to_tensor  # noqa: E402
from models.segmentation import SegmentOptions, segment_batch  # noqa: E402
from models.train.common import pick_device  # noqa: E402


def raw_images_per_s(store: Path, name: str, images: list[bytes], batch: int, device: torch.device) -> float:
    model, config = checkpoints.load_model(store / name, device=device)
    mean, std = config.normalization["mean"], config.normalization["std"]
    tensors = [to_tensor(decode_image(b)).to(device) for b in images]
    options = [SegmentOptions()] * batch
    with torch.inference_mode():
        segment_batch(model, tensors[:batch], mean=mean, std=std, options=options)  # warm-up
        start = time.perf_counter()
        for i in range(0, len(tensors), batch):
            part = tensors[i:i + batch]
            segment_batch(model, part, mean=mean, std=std, options=options[:len(part)])
    return len(tensors) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", default=None)
    parser.add_argument("--model", default="quickstart-unet")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="raw batch size = the server's max batch size")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR / "segmentation_serving.json"))
    args = parser.parse_args()

    device = pick_device(args.device)
    images = synth_png_images(args.images, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        store, name = (Path(args.model_store), args.model) if args.model_store else segmenter_store(Path(tmp))
        raw = raw_images_per_s(store, name, images, args.batch, device)
        rows = measure_service("segmentation", store, name, images, lambda cl, d: cl.segment(d), device=device,
                               batch=args.batch)
    header = (f"device: {device_name(device)}; model: {name}; {len(images)} images of {args.size} px; "
              f"batch {args.batch}")
    report("Segment", raw, rows, header, args.out, {"device": device_name(device), "model": name,
                                                    "images": len(images), "image_size": args.size,
                                                    "batch": args.batch})


if __name__ == "__main__":
    main()
