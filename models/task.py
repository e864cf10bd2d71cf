"""The task object: one definition per task that every transport and engine calls.

The shape of LitServe's ``LitAPI`` and KServe's ``Model``. A task (models/<task>.py) says how
to build its model from a stored config, what one input is (``model_input``), how a batch runs
(``run_batch``) and what a result looks like as plain data (``to_row``), plus the files its batch
jobs write. The service (services/pipeline.py and the codecs), the batch engines (local, Ray,
remote), the KServe path, the benchmarks and evaluation all call these methods; none of them
restates a task.

Shapes: an image input starts as RGB uint8 (H, W, 3); ``model_input`` makes the tensor the
model takes (on the CPU); ``run_batch`` moves inputs to the model's device and returns one
plain output per input, in order (inputs the serving batcher has already moved there with
``InputMover`` stay where they are).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Copied:
    """Inputs copied to a CUDA device on a copy stream: ``event`` marks the copy's end."""

    event: torch.cuda.Event
    tensors: list[torch.Tensor]


class InputMover:
    """Moves model inputs to ``device`` ahead of the model: the serving batcher's prepare stage,
    which runs for the next batch while the one before computes.

    On CUDA each tensor is pinned and copied ``non_blocking`` on a stream of its own, so the copy
    overlaps the compute; ``ready`` (in the thread that computes, before the model) makes the
    compute stream wait for that copy and tells the caching allocator that stream uses the
    tensors. On other devices tensors are moved with ``.to`` (on the CPU: unchanged). Tensors
    inside lists, tuples and dicts are moved too; anything else passes unchanged. A task's
    ``run_batch`` ``x.to(device)`` is then a no-op."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def copies(self) -> bool:
        """Whether moving is work worth a stage of its own: a copy to a GPU (on the CPU nothing moves)."""
        return self.stream is not None

    def move(self, inputs: Sequence[Any]) -> tuple[list[Any], Copied | None]:
        """``inputs`` on the device, in order, and (on CUDA) what ``ready`` needs before they are used."""
        if self.stream is None:
            return [_moved(x, lambda t: t.to(self.device)) for x in inputs], None
        tensors: list[torch.Tensor] = []

        def copy(t: torch.Tensor) -> torch.Tensor:
            if t.device.type == "cpu":
                t = t.pin_memory().to(self.device, non_blocking=True)
            tensors.append(t)
            return t

        with torch.cuda.stream(self.stream):
            moved = [_moved(x, copy) for x in inputs]
            event = torch.cuda.Event()
            event.record(self.stream)
        return moved, Copied(event, tensors)

    def ready(self, copied: Copied | None) -> None:
        """Make the current (compute) stream wait for ``copied``'s copy; call before the model."""
        if copied is None:
            return
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(copied.event)
        for t in copied.tensors:
            t.record_stream(stream)  # their memory is not reused before this stream is done with it


def _moved(x: Any, move: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(x, torch.Tensor):
        return move(x)
    if type(x) in (list, tuple):
        return type(x)(_moved(v, move) for v in x)
    if isinstance(x, dict):
        return {k: _moved(v, move) for k, v in x.items()}
    return x
