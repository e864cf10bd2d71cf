"""The transfer-learning table: held-out top-1 on a small target domain, from scratch against
starting from a classifier trained on a source domain (three ways) and from a U-Net's encoder.

    python benchmarks/transfer.py [--labels 5 20 100] [--seed 0] [--unet MODEL_DIR] [--work DIR] [--out DIR]

The data (``cvtasks data synth --task classification``, 64 px, seeded):

- source domain: large bright shapes on dark backgrounds, 600 training + 60 validation images;
- target domain (``--domain target``): smaller, darker shapes on bright checkerboard or dotted
  textures; a pool of 600 images, of which the first N per class are the labelled training set,
  60 validation images (used to keep the best epoch, alike for every row) and 300 held-out test
  images that only the final measurement sees.

The rows, for each N in --labels, all trained by ``train_classification`` with the same recipe
(``TARGET_RECIPE``: batch, lr, warmup; the same number of epochs for every row of one N, so about
``TARGET_STEPS`` optimiser steps):

- ``scratch``: the tiny CNN (``classifier_tiny``) from random weights;
- ``frozen``, ``last 2``, ``full (backbone lr x0.1)``: the same CNN starting from the source
  classifier's weights (its backbone; a new head), with ``--transfer frozen``, ``last`` with
  ``--trainable-stages 2`` (of its 4), and ``full`` with ``--backbone-lr-scale 0.1``;
- ``scratch (resnet18)`` and ``U-Net encoder (resnet18)``: resnet18, from random weights and from
  the encoder of a U-Net trained on the synthetic segmentation scenes (``--unet``: a stored
  U-Net with a resnet18 encoder, e.g. the demo's model_store/quickstart-unet; default: the
  quickstart U-Net recipe is trained here on 64 px scenes, 200 images), full fine-tuning.

Training time is the seconds ``train_classification`` reports per row (validation each epoch
included). Prints the table and writes transfer.json and transfer.md to --out
(benchmarks/results by default).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from models import checkpoints
from models.class_datasets import ClassificationDataset, image_folder
from models.evaluation import evaluate_classifier
from models.synth import CLASSES, generate_classification, generate_shapes
from models.train.classification import ClassificationTrainConfig, train_classification

RESULTS_DIR = Path(__file__).parent / "results"
IMAGE_SIZE = 64
SOURCE_SPLITS = {"train": 600, "val": 60}
TARGET_SPLITS = {"pool": 600, "val": 60, "test": 300}
LABELS_PER_CLASS = (5, 20, 100)

SOURCE_RECIPE: dict[str, Any] = {"architecture": "classifier_tiny", "epochs": 8, "batch_size": 32, "lr": 3e-3}
TARGET_RECIPE: dict[str, Any] = {"batch_size": 16, "lr": 3e-3, "warmup_steps": 10}
TARGET_STEPS, MAX_EPOCHS = 240, 120  # per row: epochs = min(MAX_EPOCHS, ceil(TARGET_STEPS / steps per epoch))
UNET_SPLITS = {"train": 200, "val": 20}


@dataclass(frozen=True)
class Row:
    """One way to train on the target domain: ``start`` is "random", "source" or "unet"."""

    name: str
    architecture: str
    start: str
    transfer: dict[str, Any]


ROWS: tuple[Row, ...] = (
    Row("scratch", "classifier_tiny", "random", {}),
    Row("frozen", "classifier_tiny", "source", {"transfer": "frozen"}),
    Row("last 2", "classifier_tiny", "source", {"transfer": "last", "trainable_stages": 2}),
    Row("full (backbone lr x0.1)", "classifier_tiny", "source", {"transfer": "full", "backbone_lr_scale": 0.1}),
    Row("scratch (resnet18)", "resnet18", "random", {}),
    Row("U-Net encoder (resnet18)", "resnet18", "unet", {"transfer": "full"}),
)


def epochs_for(labelled: int, batch_size: int = TARGET_RECIPE["batch_size"]) -> int:
    """Epochs of every row at ``labelled`` training images: about TARGET_STEPS steps (the loop
    drops a smaller last batch), at most MAX_EPOCHS."""
    steps = labelled // batch_size if labelled > batch_size else 1
    return min(MAX_EPOCHS, math.ceil(TARGET_STEPS / steps))


def make_domains(work: Path, seed: int = 0) -> tuple[Path, Path]:
    """The source and target data under ``work`` (see the module docstring)."""
    source, target = work / "source", work / "target"
    generate_classification(source, splits=SOURCE_SPLITS, image_size=IMAGE_SIZE, domain="source", seed=seed)
    generate_classification(target, splits=TARGET_SPLITS, image_size=IMAGE_SIZE, domain="target", seed=seed + 1)
    return source, target


def labelled_subset(target: Path, per_class: int) -> Path:
    """A CSV (image, label) of the first ``per_class`` pool images of each class."""
    pool = target / "images" / "pool"
    classes, items = image_folder(pool)
    taken = dict.fromkeys(range(len(classes)), 0)
    path = target / f"labels-{per_class}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        for file, label in items:
            if taken[label] < per_class:
                writer.writerow([file.relative_to(pool).as_posix(), classes[label]])
                taken[label] += 1
    if min(taken.values()) < per_class:
        raise ValueError(f"the target pool has fewer than {per_class} images of some class: {taken}")
    return path


def train_source(source: Path, work: Path, seed: int = 0) -> tuple[Path, float]:
    """The source classifier; returns its weights file and training seconds."""
    cfg = ClassificationTrainConfig(
        train_images=str(source / "images" / "train"),
        val_images=str(source / "images" / "val"),
        run_dir=str(work / "runs" / "source"),
        model_store=str(work / "model_store"),
        name="source",
        image_size=IMAGE_SIZE,
        seed=seed,
        progress=False,
        **SOURCE_RECIPE,
    )
    result = train_classification(cfg)
    return result.model_dir / "model.safetensors", result.seconds


def train_unet(work: Path, seed: int = 0) -> tuple[Path, float]:
    """The quickstart U-Net recipe (resnet18 encoder, depth 3) on 64 px segmentation scenes."""
    from models.train.segmentation import quickstart_config, train_segmentation

    data = work / "scenes"
    generate_shapes(data, splits=UNET_SPLITS, image_size=IMAGE_SIZE, seed=seed)
    cfg = quickstart_config(data, work, arch="unet", image_size=IMAGE_SIZE, seed=seed, progress=False)
    result = train_segmentation(cfg)
    return result.model_dir, result.seconds


def held_out_top1(model_dir: Path, target: Path) -> float:
    """Top-1 of the stored classifier on the target's held-out test images."""
    model, config = checkpoints.load_model(model_dir)
    classes, items = image_folder(target / "images" / "test", config.classes)
    norm = config.normalization
    dataset = ClassificationDataset(items, classes, size=IMAGE_SIZE, mean=norm["mean"], std=norm["std"])
    return evaluate_classifier(model, dataset, progress=False).top1


def run_row(row: Row, per_class: int, target: Path, work: Path, starts: dict[str, Path], seed: int = 0) -> dict:
    """Train one row on ``per_class`` labelled target images per class; its top-1 and seconds."""
    name = f"{row.name}-{per_class}".replace(" ", "_").replace("(", "").replace(")", "")
    labels = labelled_subset(target, per_class)
    cfg = ClassificationTrainConfig(
        train_images=str(target / "images" / "pool"),
        train_labels=str(labels),
        val_images=str(target / "images" / "val"),
        run_dir=str(work / "runs" / name),
        model_store=str(work / "model_store"),
        name=name,
        architecture=row.architecture,
        backbone_weights=None if row.start == "random" else str(starts[row.start]),
        image_size=IMAGE_SIZE,
        epochs=epochs_for(per_class * len(CLASSES)),
        patience=MAX_EPOCHS,  # no early stop: every row trains its epochs, the best validation epoch is kept
        seed=seed,
        progress=False,
        **TARGET_RECIPE,
        **row.transfer,
    )
    result = train_classification(cfg)
    return {
        "row": row.name,
        "labels_per_class": per_class,
        "architecture": row.architecture,
        "start": row.start,
        **row.transfer,
        "epochs": cfg.epochs,
        "val_top1": result.metrics["top1"],
        "test_top1": held_out_top1(result.model_dir, target),
        "train_seconds": result.seconds,
    }


def run_table(
    work: Path,
    *,
    labels: Sequence[int] = LABELS_PER_CLASS,
    rows: Sequence[Row] = ROWS,
    seed: int = 0,
    unet: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every row for every N in ``labels``; returns the results (with the source and U-Net runs)."""
    source, target = make_domains(work, seed)
    source_weights, source_seconds = train_source(source, work, seed)
    starts, extra = {"source": source_weights}, {"source_train_seconds": source_seconds}
    if any(r.start == "unet" for r in rows):
        if unet is None:
            unet, extra["unet_train_seconds"] = train_unet(work, seed)
        starts["unet"] = unet
        extra["unet"] = str(unet)
    results = []
    jobs = [(row, n) for n in labels for row in rows]
    for row, n in tqdm(jobs, desc="transfer table", disable=None if progress else True):
        results.append(run_row(row, n, target, work, starts, seed))
    return {"rows": results, **extra}


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """The table: one line per row, a top-1 (and training seconds) column per labels-per-class."""
    counts = sorted({r["labels_per_class"] for r in results})
    names = list(dict.fromkeys(r["row"] for r in results))
    cell = {(r["row"], r["labels_per_class"]): r for r in results}
    head = "| start / transfer | " + " | ".join(f"{n} labels/class: top-1 (train s)" for n in counts) + " |"
    lines = [head, "|---|" + "---|" * len(counts)]
    for name in names:
        values = [cell.get((name, n)) for n in counts]
        shown = [f"{v['test_top1']:.3f} ({v['train_seconds']:.0f} s)" if v else "" for v in values]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def best_gain(results: Sequence[dict[str, Any]], per_class: int) -> float:
    """The best source-transfer row's top-1 minus scratch's, at ``per_class`` labels."""
    at = {r["row"]: r["test_top1"] for r in results if r["labels_per_class"] == per_class}
    transfers = [r.name for r in ROWS if r.start == "source" and r.name in at]
    return max(at[name] for name in transfers) - at["scratch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=list(LABELS_PER_CLASS), help="labels per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet", type=Path, default=None, help="a stored U-Net with a resnet18 encoder")
    parser.add_argument("--work", type=Path, default=None, help="keep the data and models here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 by default: on a CPU shared with other busy processes these tiny models train "
        "several times faster on one thread than on two that stall one another (measured: 5 s against 42 s)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        table = run_table(work, labels=args.labels, seed=args.seed, unet=args.unet)
    text = markdown(table["rows"])
    print(text)
    for n in args.labels:
        gain = best_gain(table["rows"], n)
        print(f"{n} labels/class: best transfer from the source classifier - scratch = {gain:+.3f}")
    report = {
        **table,
        "labels_per_class": args.labels,
        "seed": args.seed,
        "image_size": IMAGE_SIZE,
        "source_recipe": SOURCE_RECIPE,
        "target_recipe": {**TARGET_RECIPE, "target_steps": TARGET_STEPS, "max_epochs": MAX_EPOCHS},
        "row_definitions": [asdict(r) for r in ROWS],
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "total_seconds": time.perf_counter() - started,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transfer.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "transfer.md").write_text(text)
    print(f"wrote {args.out / 'transfer.json'} and {args.out / 'transfer.md'} ({report['total_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
