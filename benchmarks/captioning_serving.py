"""Raw in-process captioner vs the gRPC service, measured side by side in one run.

    python benchmarks/captioning_serving.py [--model-store DIR --model NAME] [--images N] [--beam K]

Raw: the model on pre-processed tensors in batches of --batch (the server's max batch size),
batched beam search, token ids back on the CPU. Service: `Caption` unary calls with the same
beam size from 1, 4 and 16 concurrent clients. Without --model-store the quickstart
architecture with random weights is used: it rarely emits <end>, so every caption runs to
max_length (the slow case); a trained captioner (e.g. demo_output/model_store,
quickstart-captioner) stops earlier. Writes benchmarks/results/captioning_serving.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import captioner_store  # noqa: E402
from bench_common import RESULTS_DIR, device_name, measure_service, report, synth_png_images  # noqa: E402

from models import checkpoints  # noqa: E402
from models.captioning import beam_search, image_input  # noqa: E402
from models.preprocessing import decode_image  # noqa: E402
from models.train.common import pick_device  # noqa: E402


def raw_images_per_s(store: Path, name: str, images: list[bytes], batch: int, beam: int,
                     device: torch.device) -> float:
    model, config = checkpoints.load_model(store / name, device=device)
    max_length = int(config.extra.get("max_length", 20))
    tensors = torch.stack([image_input(decode_image(b), size=config.input_size) for b in images]).to(device)
    beam_search(model, tensors[:batch], beam_size=beam, max_length=max_length)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(tensors), batch):
        beam_search(model, tensors[i:i + batch], beam_size=beam, max_length=max_length)
    return len(tensors) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", default=None)
    parser.add_argument("--model", default="quickstart-captioner")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--beam", type=int, default=3, help="beam size of every caption (1 = greedy)")
    parser.add_argument("--batch", type=int, default=8, help="raw batch size = the server's max batch size")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR / "captioning_serving.json"))
    args = parser.parse_args()

    device = pick_device(args.device)
    images = synth_png_images(args.images, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        store, name = (Path(args.model_store), args.model) if args.model_store else captioner_store(Path(tmp))
        raw = raw_images_per_s(store, name, images, args.batch, args.beam, device)
        rows = measure_service("captioning", store, name, images, lambda cl, d: cl.caption(d, beam_size=args.beam),
                               device=device, batch=args.batch)
    header = (f"device: {device_name(device)}; model: {name}; {len(images)} images of {args.size} px; "
              f"beam {args.beam}; batch {args.batch}")
    report("Caption", raw, rows, header, args.out, {"device": device_name(device), "model": name,
                                                    "images": len(images), "image_size": args.size,
                                                    "beam": args.beam, "batch": args.batch})


if __name__ == "__main__":
    main()
