"""One batch job: a task object (models/task.py) bound to a model's config, the job's options and
its output folder. The local engine, the Ray engine and the remote mode all run a ``BatchJob``;
what is specific to a task (its model input, its batch, its rows and files) is the task's.

    job = build_job("detection", config, "results/", score_threshold=0.3, annotate=True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.checkpoints import ModelConfig
from models.options import Options
from models.preprocessing import DEFAULT_MAX_PIXELS, decode_image
from models.task import OutputFolder, Task
from models.tasks import get_task


class BatchJob:
    """``options`` are the task's (name -> value; absent or None: the default, as on the wire);
    ``out`` is the job's output folder."""

    def __init__(
        self,
        task: Task,
        config: ModelConfig,
        out: str | Path,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if config.task != task.name:
            raise ValueError(
                f"model `{config.name}` is a {config.task} model; `cvtasks batch {task.name}` needs a {task.name} model"
            )
        self.task, self.config, self.max_pixels = task, config, max_pixels
        self.out = OutputFolder(out)
        self.options: Options = task.options(config, options or {})
        aliases = task.Options.aliases()
        # What the caller set, by field name: remote mode sends just these, so the server's own
        # model decides the rest (e.g. a captioner's trained max_length).
        self.given = {aliases.get(k, k): v for k, v in (options or {}).items() if v is not None}

    @property
    def name(self) -> str:
        return self.task.name

    def job(self) -> dict[str, Any]:
        """What makes two runs the same job (recorded in job.json)."""
        return {
            "task": self.name,
            "model": self.config.name,
            "version": self.config.version,
            "options": self.options.to_json(),
        }

    def spec(self) -> dict[str, Any]:
        """Plain data that rebuilds this job elsewhere (a Ray worker): ``job_from_spec(spec)``."""
        return {
            "task": self.name,
            "config": self.config.to_json(),
            "out": str(self.out.root),
            "max_pixels": self.max_pixels,
            "options": self.options.to_json(),
        }

    def prepare(self, data: bytes) -> tuple[np.ndarray, Any]:
        """Encoded image bytes -> (RGB uint8 (H, W, 3), model input). Raises DecodeError for bad files."""
        array = decode_image(data, max_pixels=self.max_pixels)
        return array, self.task.model_input(array, self.config)

    def infer(self, model: nn.Module, inputs: Sequence[Any]) -> list[Any]:
        """A batch of model inputs (CPU) -> one output per input (the task's run_batch)."""
        with torch.inference_mode():
            return self.task.run_batch(model, self.config, inputs, [self.options] * len(inputs))

    def record(self, key: str, output: Any, size: tuple[int, int], pixels: np.ndarray | None = None) -> dict[str, Any]:
        """One input's JSON row; writes its per-input files (atomically) first."""
        return self.task.record(self, key, output, size, pixels)

    def finish(self, rows: list[dict[str, Any]]) -> list[Path]:
        """The results files from every finished input's row (sorted by input)."""
        return self.task.finish(self, rows)

    @property
    def needs_pixels(self) -> bool:
        """Whether ``record`` draws on the decoded input (so remote mode decodes it locally too)."""
        return self.task.needs_pixels(self.options)

    # --- generation: inputs are the indices of a seed's images

    def key(self, index: int) -> str:
        return self.task.key(self.options, index)  # type: ignore[attr-defined]

    def inputs(self, count: int) -> list[Any]:
        """Inputs 0..count-1 of a job whose inputs are not files (generation's latents)."""
        return self.task.job_inputs(self.config, self.options, count)  # type: ignore[attr-defined]


def build_job(
    task: str, config: ModelConfig, out: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, **options: Any
) -> BatchJob:
    return BatchJob(get_task(task), config, out, max_pixels=max_pixels, options=options)


def job_from_spec(spec: Mapping[str, Any]) -> BatchJob:
    """The inverse of ``BatchJob.spec``."""
    return build_job(
        spec["task"],
        ModelConfig.from_json(spec["config"]),
        spec["out"],
        max_pixels=spec["max_pixels"],
        **spec["options"],
    )
