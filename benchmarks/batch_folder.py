"""Batch jobs over a folder: model only vs the local engine vs a naive loop, on the same folder.

    python benchmarks/batch_folder.py [--task segmentation|detection|captioning] [--images N] [--size PX]
                                      [--input-dir DIR] [--model-store DIR --model NAME] [--batch-size B]
                                      [--decode-workers W] [--device DEV] [--threads T] [--repeat R]

All three run the same model, task, batch size and device on the same files, in one process:

- model only: every input read and ``task.prepare``d up front (not timed) and held in memory on
  the device, then ``task.infer`` in batches of --batch-size; outputs back on the CPU, nothing written.
- local engine: ``run_local`` end to end into a fresh output folder (progress bar off): reading,
  decoding in --decode-workers threads, inference, each input's files and manifest line, the results
  files; timed from opening the Manifest to the returned Summary, as a user would wait for it.
- naive loop: for each file, read it, ``task.prepare``, ``task.infer`` it alone (batch 1),
  ``task.record`` (its mask / files); then ``task.finish`` writes the same results files. No manifest.

The model is warmed up (a full batch and a single input) first. The three are run in interleaved
rounds (model, engine, naive; --repeat times) so a change in the machine's load hits each alike,
and the MEDIAN run of each is reported (every run is kept in the JSON). Inputs are read from the
page cache (the folder was just written or read): cold-disk reads are not measured. On a CPU
shared with other busy processes torch's OpenMP threads stall one another and the model-only
numbers swing several-fold (they can even come out below the engine's): measure on an idle
machine, or pin --threads 1 there.

Without --input-dir the folder is --images synthetic shapes scenes of --size px, JPEG (quality 90).
Without --model-store a randomly initialised model is stored and loaded (throughput does not
depend on the weights, except for how many boxes a detector keeps and how long a captioner's
captions run): segmentation a small U-Net (MobileNetV3-small encoder, as the tests'), detection and
captioning the same models as detection_serving.py and captioning_serving.py.
Writes benchmarks/results/batch_folder.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import RESULTS_DIR, device_name, write_results  # noqa: E402
from bench_models import RANDOM_STORES  # noqa: E402

from models import checkpoints  # noqa: E402
from models.batch.engine import file_work, run_local  # noqa: E402
from models.batch.job import BatchJob, build_job  # noqa: E402
from models.batch.store import InputFile, Manifest, list_inputs  # noqa: E402
from models.preprocessing import decode_image, encode_image  # noqa: E402
from models.synth import generate_shapes  # noqa: E402
from models.train.common import pick_device  # noqa: E402

MODES = {
    "model_only": "model only (pre-decoded, batched)",
    "engine": "local engine end to end",
    "naive": "naive loop (read, decode, infer 1, write)",
}


def synth_jpeg_folder(folder: Path, n: int, size: int, seed: int = 7) -> Path:
    """``n`` synthetic shapes scenes of ``size`` px as JPEG (quality 90) in ``folder``/images."""
    images = folder / "images"
    images.mkdir(parents=True)
    generate_shapes(folder / "synth", splits={"test": n}, image_size=size, seed=seed)
    for png in sorted((folder / "synth" / "images" / "test").glob("*.png")):
        (images / f"{png.stem}.jpg").write_bytes(encode_image(decode_image(png.read_bytes()), "jpeg", quality=90))
    shutil.rmtree(folder / "synth")
    return images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only_seconds(
    task: BatchJob, model: nn.Module, inputs: list[torch.Tensor], batch: int, device: torch.device
) -> float:
    """``task.infer`` over pre-prepared inputs already on ``device``, in batches of ``batch``."""
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(inputs), batch):
        task.infer(model, inputs[i : i + batch])
    _sync(device)
    return time.perf_counter() - start


def engine_seconds(
    make_task: Callable[[Path], BatchJob],
    model: nn.Module,
    files: list[InputFile],
    out: Path,
    batch: int,
    decode_workers: int,
) -> float:
    """``run_local`` into the fresh folder ``out``; checks that every input succeeded."""
    task = make_task(out)
    start = time.perf_counter()
    summary = run_local(
        task,
        model,
        file_work(task, files),
        Manifest(out, task.job()),
        batch_size=batch,
        decode_workers=decode_workers,
        progress=False,
    )
    seconds = time.perf_counter() - start
    if (summary.processed, summary.failed) != (len(files), 0):
        raise RuntimeError(
            f"the engine processed {summary.processed} and failed {summary.failed} of {len(files)} "
            f"inputs; see {out / 'errors.jsonl'}"
        )
    return seconds


def naive_seconds(make_task: Callable[[Path], BatchJob], model: nn.Module, files: list[InputFile], out: Path) -> float:
    """One file at a time: read, prepare, infer alone, record; then the results files."""
    task = make_task(out)
    start = time.perf_counter()
    rows = []
    for f in files:
        array, model_input = task.prepare(f.path.read_bytes())
        output = task.infer(model, [model_input])[0]
        rows.append({"input": f.key, **task.record(f.key, output, array.shape[:2], array)})
    task.finish(rows)
    return time.perf_counter() - start


def measure(
    args: argparse.Namespace,
    model: nn.Module,
    config: checkpoints.ModelConfig,
    files: list[InputFile],
    device: torch.device,
    work: Path,
) -> dict[str, list[float]]:
    """Seconds of each mode's runs, in interleaved rounds after a warm-up."""

    def make_task(out: Path) -> BatchJob:
        return build_job(args.task, config, out)

    task = make_task(work / "model-only")  # writes nothing
    inputs = [task.prepare(f.path.read_bytes())[1].to(device) for f in files]
    task.infer(model, inputs[: args.batch_size])  # warm-up: a full batch, then the batch-1 path
    task.infer(model, inputs[:1])
    _sync(device)
    runs: dict[str, list[float]] = {mode: [] for mode in MODES}
    for r in range(args.repeat):
        runs["model_only"].append(model_only_seconds(task, model, inputs, args.batch_size, device))
        runs["engine"].append(
            engine_seconds(make_task, model, files, work / f"engine-{r}", args.batch_size, args.decode_workers)
        )
        runs["naive"].append(naive_seconds(make_task, model, files, work / f"naive-{r}"))
        shutil.rmtree(work / f"engine-{r}")  # not timed
        shutil.rmtree(work / f"naive-{r}")
    return runs


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def threads(args: argparse.Namespace) -> dict[str, int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return {
        "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "decode_workers": args.decode_workers,
    }


def report(runs: dict[str, list[float]], n: int, header: str, out: str | Path, extra: dict[str, Any]) -> None:
    """Print the median images/s of each mode and the ratios; write everything as JSON to ``out``."""
    rates = {mode: [n / s for s in seconds] for mode, seconds in runs.items()}
    median = {mode: statistics.median(r) for mode, r in rates.items()}
    ratios = {
        "engine_to_model_only": median["engine"] / median["model_only"],
        "engine_to_naive": median["engine"] / median["naive"],
    }
    print(header)
    print(f"{'':44s} {'images/s':>9s}   runs (images/s)")
    for mode, label in MODES.items():
        print(f"{label:44s} {median[mode]:9.2f}   " + " ".join(f"{r:.2f}" for r in rates[mode]))
    print(
        f"ratio engine / model only: {ratios['engine_to_model_only']:.2f}   "
        f"ratio engine / naive: {ratios['engine_to_naive']:.2f}   (medians of {len(runs['engine'])} runs)"
    )
    medians = {f"{m}_images_per_s": v for m, v in median.items()}
    write_results(out, {**extra, "statistic": "median", **medians, **ratios, "runs_images_per_s": rates})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="segmentation", choices=sorted(RANDOM_STORES))
    parser.add_argument(
        "--input-dir",
        default=None,
        help="a folder of images (read recursively) instead of synthetic ones; --images then takes the first N",
    )
    parser.add_argument("--images", type=int, default=None, help="number of images (synthetic default 128)")
    parser.add_argument("--size", type=int, default=384, help="side of the synthetic images, px")
    parser.add_argument("--model-store", default=None)
    parser.add_argument("--model", default=None, help="model name in --model-store")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median of each mode is reported")
    parser.add_argument("--out", default=str(RESULTS_DIR / "batch_folder.json"))
    args = parser.parse_args()
    if args.model_store and not args.model:
        parser.error("--model-store needs --model NAME")
    if min(args.batch_size, args.decode_workers, args.repeat, args.images or 1, args.threads or 1) < 1:
        parser.error("--batch-size, --decode-workers, --repeat, --images and --threads must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="batch-folder-") as tmp:
        work = Path(tmp)
        if args.input_dir:
            folder, what = Path(args.input_dir), f"from {args.input_dir}"
            files = list_inputs(folder, recursive=True)[: args.images]
        else:
            folder = synth_jpeg_folder(work / "data", args.images or 128, args.size)
            what = f"synthetic JPEG, {args.size} px"
            files = list_inputs(folder)
        if not files:
            raise SystemExit(f"no images in {folder}")
        store, name = (
            (Path(args.model_store), args.model) if args.model_store else RANDOM_STORES[args.task](work / "store")
        )
        model, config = checkpoints.load_model(store / name, device=device)
        runs = measure(args, model, config, files, device, work)
    counts = threads(args)
    cpu = cpu_model()
    header = (
        f"device: {device_name(device)}; CPU: {cpu}; "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"\nmodel: {name} ({args.task}); {len(files)} images ({what}); "
        f"batch {args.batch_size}; median of {args.repeat} interleaved rounds"
    )
    report(
        runs,
        len(files),
        header,
        args.out,
        {
            "device": device_name(device),
            "cpu": cpu,
            **counts,
            "task": args.task,
            "model": name,
            "images": len(files),
            "image_size": args.size if not args.input_dir else None,
            "input_dir": args.input_dir,
            "batch": args.batch_size,
            "repeat": args.repeat,
        },
    )


if __name__ == "__main__":
    main()
