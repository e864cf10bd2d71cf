"""The settings every training run shares, declared once: a task's train config subclasses
``RunConfig`` (or ``FitConfig``, for a run that validates a metric each epoch) and names only its
own defaults, by keyword:

    @dataclass(frozen=True)
    class SegmentationTrainConfig(FitConfig, defaults={"name": "segmenter", "batch_size": 8}):
        train_images: str
        ...

The shared fields are keyword-only, so a task's required data paths stay its first arguments.
``cvtasks train`` derives one flag per field (services/commands/flags.py) and the loop takes its
``Settings`` from them (``loop.Settings.of``). Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.options import option


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where a run writes, how long it trains and on what: the fields of every task's train config."""

    name: str = option("model", "model name in the store")
    run_dir: str = option("", "checkpoints, plots and samples (default: runs/<name>)")
    model_store: str = option("model_store", "where the trained model is stored")
    epochs: int = option(10, "epochs")
    batch_size: int = option(32, "images per step (per process under torchrun)")
    lr: float = option(1e-3, "peak learning rate")
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: CUDA when available)")
    seed: int = option(0, "random seed")
    resume: bool = option(False, "continue from <run-dir>/last.pt")
    progress: bool = True

    def __init_subclass__(cls, defaults: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """A task's own defaults of inherited fields (``defaults={"epochs": 12}``): each field keeps
        its help and bounds and takes the task's default, which the flags' help then shows."""
        super().__init_subclass__(**kwargs)
        inherited = {f.name: f for f in dataclasses.fields(cls.__mro__[1])}  # the base's, its own bases' with them
        for name, value in (defaults or {}).items():
            if name not in inherited:
                raise TypeError(f"{cls.__name__}: no setting {name!r} to give a default; settings: {sorted(inherited)}")
            if "__annotations__" not in cls.__dict__:  # (else it is the base's dict)
                cls.__annotations__ = {}
            cls.__annotations__[name] = inherited[name].type
            setattr(cls, name, dataclasses.field(default=value, metadata=inherited[name].metadata, kw_only=True))

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.run_dir:
            object.__setattr__(self, "run_dir", f"runs/{self.name}")


@dataclass(frozen=True, kw_only=True)
class FitConfig(RunConfig):
    """A run with one optimiser, a warmup + cosine schedule, a validation metric each epoch that
    keeps the best epoch (and may stop early), optional mixed precision and loader workers."""

    optimizer: str = option("adamw", "optimiser", choices=("adamw", "sgd"))
    weight_decay: float = option(1e-4, "weight decay")
    warmup_steps: int = option(20, "linear warmup steps (then cosine decay)")
    patience: int | None = option(None, "early stopping: epochs without a better validation score (default: none)")
    amp: bool = option(True, "mixed precision (used only on CUDA)")
    workers: int = option(0, "data-loading worker processes")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")


def split_paths(data_dir: str | Path, labels: str = "", under: str = "") -> dict[str, str]:
    """A quickstart's data paths in the `cvtasks data synth` layout: ``<split>_images``
    (``<data>/images/<split>``) and, with ``labels``, ``<split>_<labels>`` (``<data>/<under>``,
    ``{split}`` filled in), for the train and val splits."""
    data, paths = Path(data_dir), {}
    for split in ("train", "val"):
        paths[f"{split}_images"] = str(data / "images" / split)
        if labels:
            paths[f"{split}_{labels}"] = str(data / under.format(split=split))
    return paths


def store_settings(out_dir: str | Path, name: str, run: str) -> dict[str, str]:
    """A quickstart's outputs: the model ``name`` in ``<out>/model_store``, its run in ``<out>/<run>``."""
    out = Path(out_dir)
    return {"run_dir": str(out / run), "model_store": str(out / "model_store"), "name": name}
