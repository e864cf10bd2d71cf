"""The task object: one definition per task that every transport and engine calls.

The shape of LitServe's ``LitAPI`` and KServe's ``Model``. A task (models/<task>.py) says how
to build its model from a stored config, what one input is (``model_input``), how a batch runs
(``run_batch``) and what a result looks like as plain data (``to_row``), plus the files its batch
jobs write. The service (services/pipeline.py and the codecs), the batch engines (local, Ray,
remote), the KServe path, the benchmarks and evaluation all call these methods; none of them
restates a task.

Shapes: an image input starts as RGB uint8 (H, W, 3); ``model_input`` makes the tensor the
model takes (on the CPU); ``run_batch`` moves inputs to the model's device and returns one
plain output per input, in order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from models.batch.store import write_jsonl
from models.files import atomic_write
from models.options import Options
from models.preprocessing import to_tensor

if TYPE_CHECKING:  # models.checkpoints imports the task modules (models/tasks.py), which import this one
    from models.checkpoints import ModelConfig

Opt = TypeVar("Opt", bound=Options)


class OutputFolder:
    """A batch job's output folder; per-input files are written atomically under it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, folder: str, key: str, suffix: str) -> Path:
        """``root/folder/<key><suffix>``: the input's relative path kept, so names never collide."""
        return self.root / folder / f"{key}{suffix}"

    def write(self, folder: str, key: str, suffix: str, data: bytes) -> str:
        """Write ``data`` atomically; returns its path relative to the root (for the row)."""
        path = atomic_write(self.path(folder, key, suffix), data)
        return path.relative_to(self.root).as_posix()


class Task(ABC, Generic[Opt]):
    """One task. Subclasses set ``name``, ``Options`` and ``results`` and implement the
    abstract methods; the defaults fit image tasks whose input is ``to_tensor`` of the image."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]]
    results: ClassVar[str]  # stem of a batch job's results files: "detections" -> detections.jsonl
    default_side: ClassVar[int] = 224  # input side of a stored model that states none (config.input_size 0)
    takes_images: ClassVar[bool] = True  # False: inputs are made from the options (generation's latents)

    # ----------------------------------------------------------------- the model

    @abstractmethod
    def build_model(self, config: ModelConfig) -> nn.Module:
        """The stored architecture with random weights, shaped as ``config`` says (no download)."""

    def options(self, config: ModelConfig, given: Mapping[str, Any]) -> Opt:
        """One request's options (name -> value; absent or None: the default), checked against
        the model (InvalidInputError says what to fix)."""
        return self.Options.of(given)  # type: ignore[return-value]

    def model_input(self, rgb: np.ndarray, config: ModelConfig) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> the model's input on the CPU (default: float (3, H, W) in [0, 1])."""
        return to_tensor(rgb)

    def inputs_of(self, config: ModelConfig, options: Opt) -> list[Any]:
        """The model inputs of a request that carries no image (generation: latents from a seed);
        the pipeline asks only a task with ``takes_images = False``."""
        raise NotImplementedError(f"{self.name} requests carry images: its model inputs come from them")

    def input_pixels(self, config: ModelConfig, model_input: Any) -> int:
        """Pixels a ready (not decoded) input will produce: what admission control charges."""
        return 0

    def side(self, config: ModelConfig) -> int:
        """The side of the square input the model was trained at (``default_side`` when unstated)."""
        return config.input_size or self.default_side

    def warmup_input(self, config: ModelConfig) -> Any:
        """A model input that runs the whole model once (load time: kernels, allocator); default:
        a black image of the training side."""
        return torch.zeros(3, self.side(config), self.side(config))

    @abstractmethod
    def run_batch(
        self, model: nn.Module, config: ModelConfig, inputs: Sequence[Any], options: Sequence[Opt]
    ) -> list[Any]:
        """CPU inputs and one options object each -> one output per input, in order."""

    @abstractmethod
    def to_row(self, output: Any, config: ModelConfig, options: Opt) -> dict[str, Any]:
        """One output as JSON-able data: what the CLI, batch jobs and remote mode write."""

    # ----------------------------------------------------------------- batch jobs

    def needs_pixels(self, options: Opt) -> bool:
        """Whether ``record`` draws on the decoded input (so remote mode decodes it locally too)."""
        return False

    def record(self, job: Job, key: str, output: Any, size: tuple[int, int], pixels: np.ndarray | None) -> Row:
        """One input's row in a batch job; writes its per-input files (atomically) under ``job.out``
        first. ``size`` is the input's (height, width); ``pixels`` its decoded image when needed."""
        return {"height": size[0], "width": size[1], **self.to_row(output, job.config, job.options)}

    def finish(self, job: Job, rows: list[Row]) -> list[Path]:
        """The results files from every finished input's row (sorted by input); returns their paths."""
        return [write_jsonl(job.out.root / f"{self.results}.jsonl", rows)]


class Job(Protocol):
    """What a task's batch-job rows and files depend on beside one output (a models.batch.job.BatchJob)."""

    out: OutputFolder
    config: ModelConfig
    options: Any


Row = dict[str, Any]  # one input's JSON row in a batch job's results


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def stacked(inputs: Sequence[torch.Tensor], model: nn.Module) -> torch.Tensor:
    """Same-shape inputs as one batch on the model's device."""
    return torch.stack(list(inputs)).to(device_of(model), non_blocking=True)
