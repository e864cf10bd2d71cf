"""Per-task pieces of a batch job: the same functions run in the local engine, the Ray engine
and (minus ``prepare``/``infer``) the remote mode.

A task plugs in with one ``BATCH_TASKS`` entry, a ``BatchTask`` subclass:
``prepare`` (encoded bytes -> decoded RGB array + model input, CPU, in a pool), ``infer`` (a
batch of model inputs -> plain outputs, on the device), ``record`` (one input's output -> its
JSON row, writing its per-image files atomically) and ``finish`` (the manifest's rows -> the
results files, rebuilt at the end of every run).
"""

from __future__ import annotations

import csv
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.batch.store import atomic_write, write_jsonl
from models.checkpoints import ModelConfig
from models.preprocessing import DEFAULT_MAX_PIXELS, decode_image, encode_image, to_tensor
from models.registry import Registry


class BatchTask(ABC):
    """Base of every task's batch pieces. ``options`` are the task's settings (see each subclass);
    ``out`` is the job's output folder."""

    task = ""
    results = ""  # stem of the results files, e.g. "detections" -> detections.jsonl

    def __init__(self, config: ModelConfig, out: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 **options: Any) -> None:
        if config.task != self.task:
            raise ValueError(f"model `{config.name}` is a {config.task} model; `cvtasks batch {self.task}` "
                             f"needs a {self.task} model")
        self.config, self.out, self.max_pixels = config, Path(out), max_pixels
        self.options = self.parse_options(**options)

    @abstractmethod
    def parse_options(self, **options: Any) -> Any:
        """The task's options dataclass from keyword arguments (None = its default); raises
        ValueError / InvalidInputError for bad values."""

    def job(self) -> dict[str, Any]:
        """What makes two runs the same job (recorded in job.json)."""
        options = asdict(self.options)
        return {"task": self.task, "model": self.config.name, "version": self.config.version,
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}

    def spec(self) -> dict[str, Any]:
        """Plain data that rebuilds this task elsewhere (a Ray worker): ``task_from_spec(spec)``."""
        return {"task": self.task, "config": self.config.to_json(), "out": str(self.out),
                "max_pixels": self.max_pixels, "options": asdict(self.options)}

    def prepare(self, data: bytes) -> tuple[np.ndarray, torch.Tensor]:
        """Encoded image bytes -> (RGB uint8 (H, W, 3), model input). Raises DecodeError for bad files."""
        array = decode_image(data, max_pixels=self.max_pixels)
        return array, to_tensor(array)

    @abstractmethod
    def infer(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[Any]:
        """A batch of model inputs (CPU) -> one plain output per input, run on the model's device."""

    @abstractmethod
    def record(self, key: str, output: Any, size: tuple[int, int], array: np.ndarray | None = None
               ) -> dict[str, Any]:
        """One input's JSON row; writes its per-image files (atomically) first. ``size`` is the
        input's (height, width); ``array`` its decoded pixels when the task draws on them."""

    def finish(self, rows: list[dict[str, Any]]) -> list[Path]:
        """The results files from every successful input's row (sorted by input); returns their paths."""
        return [write_jsonl(self.out / f"{self.results}.jsonl", rows)]

    @property
    def needs_pixels(self) -> bool:
        """Whether ``record`` draws on the decoded input (so remote mode decodes it locally too)."""
        return False

    def request_options(self) -> dict[str, Any]:
        """The options as keyword arguments of the service client's ``*_stream`` call (remote mode)."""
        return {}

    def output_path(self, folder: str, key: str, suffix: str) -> Path:
        """``OUT/folder/<key><suffix>``: the input's relative path kept, so names never collide."""
        return self.out / folder / f"{key}{suffix}"

    def write(self, folder: str, key: str, suffix: str, data: bytes) -> str:
        path = atomic_write(self.output_path(folder, key, suffix), data)
        return path.relative_to(self.out).as_posix()


BATCH_TASKS: Registry[Callable[..., BatchTask]] = Registry("batch task")


def build_task(task: str, config: ModelConfig, out: str | Path, **options: Any) -> BatchTask:
    _import_tasks()
    return BATCH_TASKS.get(task)(config, out, **options)


def task_from_spec(spec: Mapping[str, Any]) -> BatchTask:
    """The inverse of ``BatchTask.spec``."""
    return build_task(spec["task"], ModelConfig.from_json(spec["config"]), spec["out"],
                      max_pixels=spec["max_pixels"], **spec["options"])


def _import_tasks() -> None:
    import models.batch.image_tasks  # noqa: F401  (registers detection, segmentation, captioning)
    import models.batch.generation_task  # noqa: F401


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write(path, buffer.getvalue())


def png(image: np.ndarray) -> bytes:
    return encode_image(image, "png")


def options_from(cls: type, given: Mapping[str, Any]) -> Any:
    """``cls(**given)`` without the None values (they take the class's defaults)."""
    return cls(**{k: v for k, v in given.items() if v is not None})
