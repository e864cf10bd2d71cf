"""Raw in-process model vs the gRPC service, one task, measured side by side in one run.

    python benchmarks/serving.py TASK [--model-store DIR --model NAME] [--images N] [--batch 8]

TASK: detection, segmentation, captioning, classification or generation. Raw: the task's own ``run_batch``
(models/<task>.py, what the server runs) on pre-decoded inputs in batches of --batch (the
server's max batch size), outputs back on the CPU. Service: the task's unary RPC (encoded PNG
bytes in; Generate with --count images per call) from 1, 4 and 16 concurrent clients. Prints
images/s, p50/p99 latency and the ratio service / raw, and writes
benchmarks/results/<task>_serving.json. Without --model-store it stores a randomly initialised
model of the quickstart architecture, which costs the same to run as a trained one up to the
number of boxes or words it keeps.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import (  # noqa: E402
    RESULTS_DIR,
    add_model_arguments,
    device_name,
    measure_service,
    report,
    synth_png_images,
)
from bench_models import captioner_store, classifier_store, detector_store, generator_store, segmenter_store  # noqa: E402

from models import checkpoints  # noqa: E402
from models.devices import pick_device  # noqa: E402
from models.preprocessing import decode_image  # noqa: E402
from models.tasks import get_task  # noqa: E402


@dataclass(frozen=True)
class Bench:
    """A task's default model, its request options, and how the service is called."""

    store: Callable[[Path], tuple[Path, str]]
    model: str  # the model's name in a --model-store (the demo's)
    rpc: str  # the name printed
    call: Callable[[Any, bytes, argparse.Namespace], Any]


BENCHES = {
    "detection": Bench(detector_store, "quickstart-detector", "Detect", lambda c, d, a: c.detect(d)),
    "segmentation": Bench(segmenter_store, "quickstart-unet", "Segment", lambda c, d, a: c.segment(d)),
    "captioning": Bench(
        captioner_store, "quickstart-captioner", "Caption", lambda c, d, a: c.caption(d, beam_size=a.beam)
    ),
    "classification": Bench(
        classifier_store, "quickstart-classifier", "Classify", lambda c, d, a: c.classify(d, top_k=1)
    ),
    "generation": Bench(
        lambda root: generator_store(root, 64),
        "quickstart-generator",
        "Generate",
        lambda c, d, a: c.generate(count=a.count, seed=next(SEEDS)),
    ),
}
SEEDS = itertools.count()


def _options(task: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "captioning": {"beam_size": args.beam},
        "generation": {"count": args.count},
        "classification": {"top_k": 1},
    }.get(task, {})


def raw_images_per_s(
    store: Path, name: str, images: list[bytes], args: argparse.Namespace, device: torch.device
) -> float:
    """Images/s of the task's run_batch alone, on inputs made before the clock starts."""
    return raw_timer(store, name, images, args, device)()


def measure_task_service(
    args: Any, task: str, store: Path, name: str, images: list[bytes], device: Any, **serving: Any
):
    """``measure_service`` with the task's benchmark call (BENCHES) and the run's batch size;
    ``serving``: concurrencies and ServingConfig settings (e.g. runtime)."""
    bench = BENCHES[task]
    return measure_service(
        task,
        store,
        name,
        images,
        lambda client, data: bench.call(client, data, args),
        device=device,
        batch=args.batch,
        **serving,
    )


def raw_timer(
    store: Path,
    name: str,
    images: list[bytes],
    args: argparse.Namespace,
    device: torch.device,
    setup: Callable[[torch.nn.Module, checkpoints.ModelConfig], Any] | None = None,
) -> Callable[[], float]:
    """A function that times one pass of the task's run_batch over ``images`` (images/s): the
    model loaded (then given to ``setup``, e.g. a runtime) and the inputs made once, beforehand."""
    model, config = checkpoints.load_model(store / name, device=device)
    if setup is not None:
        setup(model, config)
    task = get_task(config.task)
    options = task.options(config, _options(config.task, args))
    if task.takes_images:
        inputs = [task.model_input(decode_image(b), config) for b in images]
        per_input, batch = 1, args.batch
    else:  # one input of --count latents per call, as the service gets them
        inputs = [
            task.inputs_of(config, task.options(config, {**_options(task.name, args), "seed": i}))[0]
            for i in range(len(images))
        ]
        per_input, batch = args.count, max(1, args.batch // args.count)

    def timed() -> float:
        with torch.inference_mode():
            task.run_batch(model, config, inputs[:batch], [options] * len(inputs[:batch]))  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(inputs), batch):
                part = inputs[i : i + batch]
                task.run_batch(model, config, part, [options] * len(part))
            if device.type == "cuda":
                torch.cuda.synchronize()
        return len(inputs) * per_input / (time.perf_counter() - start)

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(BENCHES))
    add_model_arguments(parser, images=128, images_help="images (generation: Generate calls x --count)")
    parser.add_argument("--batch", type=int, default=8, help="raw batch size = the server's max batch size")
    parser.add_argument("--beam", type=int, default=3, help="captioning: beam size")
    parser.add_argument("--count", type=int, default=8, help="generation: images per Generate call")
    args = parser.parse_args()

    bench, device = BENCHES[args.task], pick_device(args.device)
    generating = args.task == "generation"
    calls = max(1, args.images // args.count) if generating else args.images
    images = [b""] * calls if generating else synth_png_images(calls, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        store, name = (
            (Path(args.model_store), args.model or bench.model) if args.model_store else bench.store(Path(tmp))
        )
        raw = raw_images_per_s(store, name, images, args, device)
        rows = measure_task_service(args, args.task, store, name, images, device)
    per_call = args.count if generating else 1
    for row in rows.values():  # measure_service counts calls
        row["images_per_s"] *= per_call
    header = (
        f"device: {device_name(device)}; model: {name}; {calls * per_call} images"
        f"{f' of {args.size} px' if not generating else f', {per_call} per call'}; batch {args.batch}"
    )
    extra = {
        "device": device_name(device),
        "model": name,
        "images": calls * per_call,
        "batch": args.batch,
        **({"image_size": args.size} if not generating else {"count": args.count}),
        **({"beam_size": args.beam} if args.task == "captioning" else {}),
    }
    report(bench.rpc, raw, rows, header, args.out or RESULTS_DIR / f"{args.task}_serving.json", extra)


if __name__ == "__main__":
    main()
