"""Batch pieces of generation: ``cvtasks batch generate --count N`` draws images 0..N-1 of a seed.

Image i is the generator's output for the i-th latent vector of the seed (``models.generation
.latents``), so a re-run, a larger ``--count`` or the remote mode draws exactly the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.batch.store import atomic_write
from models.batch.tasks import BATCH_TASKS, BatchTask, device_of, options_from, png
from models.generation import LatentPrior, image_grid, to_uint8
from models.preprocessing import decode_image

GRID_IMAGES = 64


@dataclass(frozen=True)
class GenerateJobOptions:
    seed: int = 0


@BATCH_TASKS.register("generation")
class GenerationBatch(BatchTask):
    """Inputs are indices; per index ``images/<seed>/<index>.png``; rows ``{"index", "seed",
    "image"}``; results ``generated.jsonl`` and ``grid.png`` (the first 64 images)."""

    task, results = "generation", "generated"

    def parse_options(self, **options: Any) -> GenerateJobOptions:
        return options_from(GenerateJobOptions, options)

    @property
    def prior(self) -> LatentPrior:
        return LatentPrior.of(self.config.model_args)

    def key(self, index: int) -> str:
        return f"{self.options.seed}/{index:06d}"

    def latents(self, count: int) -> torch.Tensor:
        """(count, nz): the seed's first ``count`` latent vectors (the same on every device)."""
        return self.prior.sample(self.options.seed, count)

    def infer(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        with torch.inference_mode():
            images = model(torch.stack(list(inputs)).to(device_of(model)))
        return list(to_uint8(images))

    def record(self, key: str, output: np.ndarray, size: tuple[int, int],
               array: np.ndarray | None = None) -> dict[str, Any]:
        seed, index = key.split("/")
        return {"seed": int(seed), "index": int(index), "image": self.write("images", key, ".png", png(output))}

    def finish(self, rows: list[dict[str, Any]]) -> list[Path]:
        paths = super().finish(rows)
        shown = [decode_image((self.out / r["image"]).read_bytes()) for r in rows[:GRID_IMAGES]]
        if shown:
            gray = self.config.model_args.get("channels", 3) == 1
            pixels = np.stack([s[..., :1] if gray else s for s in shown])
            paths.append(atomic_write(self.out / "grid.png", png(image_grid(pixels))))
        return paths
