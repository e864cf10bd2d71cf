"""``cvtasks train TASK``: one sub-command per task; its flags are the fields of the task's train
config (models/train/<task>.py), each declared there once with its default and help."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.commands.flags import add_config_flags, config_from_args


@dataclass(frozen=True)
class Labels:
    """A task's second training input beside the images: its option name and its place under ``--data``."""

    name: str  # --<split>-<name>
    under_data: str  # default path under --data; "{split}" is filled in ("": none, the labels are optional)
    help: str  # "{split}" is filled in


ANNOTATIONS = Labels("annotations", "annotations/{split}.json", "{split} COCO JSON (overrides --data)")
MASKS = Labels("masks", "masks/{split}", "{split} mask folder: PNG label maps or palette PNGs (overrides --data)")
CLASS_LABELS = Labels(
    "labels", "", "{split} labels CSV (image, label), images relative to --{split}-images (default: ImageFolder layout)"
)
CAPTIONS = Labels(
    "captions",
    "captions/{split}.json",
    "{split} captions: COCO captions JSON, JSONL or CSV (image, caption) (overrides --data)",
)


def add_data_args(parser: argparse.ArgumentParser, labels: Labels, *, splits: tuple[str, ...]) -> None:
    """``--data DIR`` (the `cvtasks data synth` layout: images/<split>/ + labels) or explicit paths per split."""
    parser.add_argument("--data", help="dataset folder in the `cvtasks data synth` layout")
    for split in splits:
        parser.add_argument(f"--{split}-images", help=f"{split} image folder (overrides --data)")
        parser.add_argument(f"--{split}-{labels.name}", help=labels.help.format(split=split))


def data_paths(args: argparse.Namespace, labels: Labels, split: str) -> tuple[str, str | None]:
    """(images, labels) of one split: the explicit options first, else their places under ``--data``."""
    images = getattr(args, f"{split}_images")
    second = getattr(args, f"{split}_{labels.name}")
    if args.data:
        images = images or str(Path(args.data) / "images" / split)
        if labels.under_data:
            second = second or str(Path(args.data) / labels.under_data.format(split=split))
    if not labels.under_data and not images:
        raise ValueError(f"give --data DIR or --{split}-images (with --{split}-{labels.name} for a CSV)")
    if not images or not (second or not labels.under_data):
        raise ValueError(f"give --data DIR or both --{split}-images and --{split}-{labels.name}")
    return images, second


def report(result: dict[str, Any]) -> None:
    """Print a finished run's summary as JSON: once, by rank 0, when torchrun started several processes."""
    from models.train.distributed import process_rank

    if process_rank() == 0:
        print(json.dumps(result, indent=2))


@dataclass(frozen=True)
class Trainer:
    """One task's ``cvtasks train`` sub-command: its config class, how its data is given, what it
    prints when done, and (optionally) the quickstart recipe ``--quickstart`` applies."""

    help: str
    config: type
    train: Callable[[Any], Any]
    summary: Callable[[Any], dict[str, Any]]
    labels: Labels | None = None  # --data / --<split>-images / --<split>-<labels>; None: the config's own
    recipe: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # settings given -> the recipe
    recipe_help: str = ""  # what --quickstart's help says of the recipe (default: its flags)
    extra: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    settings: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    skip: tuple[str, ...] = field(default=())


def _summary(result: Any, **extra: str) -> dict[str, Any]:
    """What a train_* function returned, as the JSON the command prints."""
    get = (lambda key: result[key]) if isinstance(result, dict) else (lambda key: getattr(result, key))
    return {
        name: (str(value) if name in ("model", "plot", "samples") else value)
        for name, key in extra.items()
        if (value := get(key)) is not None
    }


def _trainers() -> dict[str, Trainer]:
    from models.train import captioning, classification, detection, generation, segmentation

    def captioning_recipe(given: dict[str, Any]) -> dict[str, Any]:
        store = given.get("model_store", captioning.CaptioningTrainConfig.model_store)
        return {
            **captioning.QUICKSTART_RECIPE,
            "encoder_weights_path": str(Path(store) / captioning.QUICKSTART_ENCODER_FROM),
        }

    def classes_settings(args: argparse.Namespace) -> dict[str, Any]:
        return {"classes_file": classes_file(args)}

    return {
        "detection": Trainer(
            "train a Faster R-CNN detector on COCO-format boxes",
            detection.DetectionTrainConfig,
            detection.train_detection,
            lambda r: {
                **_summary(r, model="model_dir", plot="plot"),
                "metrics": r.metrics,
                "seconds": round(r.seconds, 1),
            },
            labels=ANNOTATIONS,
        ),
        "segmentation": Trainer(
            "train a U-Net / DeepLabV3+ segmenter on image + mask folders",
            segmentation.SegmentationTrainConfig,
            segmentation.train_segmentation,
            lambda r: {
                **_summary(r, model="model_dir", plot="plot"),
                "metrics": r.metrics,
                "stopped_early": r.stopped_early,
                "seconds": round(r.seconds, 1),
            },
            labels=MASKS,
            extra=add_classes_arg,
            settings=classes_settings,
            skip=("classes_file",),
        ),
        "captioning": Trainer(
            "train a Show-and-Tell captioner (ResNet + LSTM)",
            captioning.CaptioningTrainConfig,
            captioning.train_captioning,
            lambda r: {
                **_summary(r, model="model_dir"),
                "best_val_bleu4": round(r["best_bleu4"], 4),
                **_summary(r, plot="plot"),
                "seconds": round(r["seconds"], 1),
            },
            labels=CAPTIONS,
            recipe=captioning_recipe,
            recipe_help="the demo's; its encoder starts from <model-store>/quickstart-unet",
        ),
        "generation": Trainer(
            "train a DCGAN on a folder of images",
            generation.GenerationTrainConfig,
            generation.train_generation,
            lambda r: {
                **_summary(r, model="model_dir", samples="samples", plot="plot"),
                "seconds": round(r["seconds"], 1),
            },
            recipe=lambda given: dict(generation.QUICKSTART_RECIPE),
        ),
        "classification": Trainer(
            "train an image classifier (from scratch, or transfer from local backbone weights)",
            classification.ClassificationTrainConfig,
            classification.train_classification,
            lambda r: {
                **_summary(r, model="model_dir", plot="plot"),
                "metrics": r.metrics,
                "stopped_early": r.stopped_early,
                "seconds": round(r.seconds, 1),
            },
            labels=CLASS_LABELS,
            recipe=lambda given: dict(classification.QUICKSTART_RECIPE),
            recipe_help="the quickstart's, for `cvtasks data synth --task classification`: "
            + as_flags(classification.QUICKSTART_RECIPE, classification.ClassificationTrainConfig),
        ),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    task_sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, trainer in _trainers().items():
        p = task_sub.add_parser(task, help=trainer.help)
        skip = {"progress", *trainer.skip}
        if trainer.labels is not None:
            add_data_args(p, trainer.labels, splits=("train", "val"))
            skip |= {f"{split}_{kind}" for split in ("train", "val") for kind in ("images", trainer.labels.name)}
        trainer.extra(p)
        if trainer.recipe is not None:
            shown = trainer.recipe_help or f"the demo's: {as_flags(trainer.recipe({}), trainer.config)}"
            p.add_argument(
                "--quickstart",
                action="store_true",
                help=f"use the quickstart recipe ({shown}); flags you give override it",
            )
        add_config_flags(p, trainer.config, skip=skip)
        p.set_defaults(run=run, trainer=task)


def run(args: argparse.Namespace) -> int:
    trainer = _trainers()[args.trainer]
    settings = {**config_from_args(args, trainer.config), **trainer.settings(args)}
    if trainer.labels is not None:
        for split in ("train", "val"):
            images, labels = data_paths(args, trainer.labels, split)
            settings.update({f"{split}_images": images, f"{split}_{trainer.labels.name}": labels})
    if getattr(args, "quickstart", False):
        every = {name: settings.get(name) for name in trainer.config.__dataclass_fields__}
        chosen = under_recipe(every, trainer.config, trainer.recipe(settings))
        settings = {k: v for k, v in chosen.items() if v is not dataclasses.MISSING}
    settings.setdefault("run_dir", f"runs/{settings.get('name', trainer.config.name)}")
    report(trainer.summary(trainer.train(trainer.config(**settings))))
    return 0


def add_classes_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--classes", default=None, help="class-name file, one per line for ids 0.. (default: <data>/classes.txt)"
    )


def classes_file(args: argparse.Namespace) -> str:
    if args.classes:
        return args.classes
    if args.data:
        return str(Path(args.data) / "classes.txt")
    raise ValueError("give --classes FILE (one class name per line) or --data DIR")


def as_flags(recipe: dict[str, Any], config_class: type | None = None) -> str:
    """A recipe as the flags that give it: {"batch_size": 16} -> "--batch-size 16" (a field's own
    flag name where ``config_class`` declares one: {"architecture": ...} -> "--arch ...")."""
    fields = getattr(config_class, "__dataclass_fields__", {})

    def flag(key: str) -> str:
        spec = fields[key].metadata.get("spec") if key in fields else None
        return (getattr(spec, "flag", None) or key).replace("_", "-")

    return ", ".join(f"--{flag(key)} {value}" for key, value in recipe.items())


def under_recipe(settings: dict[str, Any], config_class: type, recipe: dict[str, Any]) -> dict[str, Any]:
    """``--quickstart``: the recipe's value for every setting the user did not give (None) or left
    at the config's default; flags the user changed win; a setting neither gives is the default."""
    fields = config_class.__dataclass_fields__

    def pick(key: str, value: Any) -> Any:
        if key in recipe and (value is None or value == fields[key].default):
            return recipe[key]
        return fields[key].default if value is None else value

    return {key: pick(key, value) for key, value in settings.items()}
