"""A Show and Tell captioner as two exported graphs, decoded in Python (models/export.py writes them).

``encoder.onnx`` / ``encoder.ts``: ``images`` (B, 3, S, S), S the model's side, letterboxed
and normalised as the task's model_input makes them -> ``h``, ``c`` (layers, B, hidden): the
LSTM state after Show and Tell's image step (the image embedding fed from a zero state), which
is all the words need of the image. ``step.onnx`` / ``step.ts``: ``tokens`` (N,) int64 (the
previous word; ``<start>`` first) and ``h``, ``c`` (layers, N, hidden) -> ``log_probs``
(N, vocabulary) and the new state ``h_next``, ``c_next``. B and N are dynamic; S is not (the
"grid" pooling's adaptive average has no ONNX form for a size unknown at export, and every
input is letterboxed to S anyway). Both parts are traced (no data-dependent Python).

What stays in Python: the decoding loop. ``ExportedCaptioner`` has the model's ``start`` and
``step``, so captioning.greedy, beam_search and caption_batch run on it unchanged: greedy is
beam size 1, and a beam search calls the step on all B x beam rows at once, reorders the state
rows between steps and ranks the beams, in torch on the CPU, as it does around the eager model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.captioning import CAPTIONING, beam_search, max_length_of
from models.task import device_of
from models.text import SPECIALS, START

ENCODER = (
    ("images",),
    ("h", "c"),
    {"images": {0: "batch"}, "h": {1: "batch"}, "c": {1: "batch"}},
)
STEP = (
    ("tokens", "h", "c"),
    ("log_probs", "h_next", "c_next"),
    {name: {0: "batch"} for name in ("tokens", "log_probs")}
    | {n: {1: "batch"} for n in ("h", "c", "h_next", "c_next")},
)
START_ID = SPECIALS.index(START)
PARITY_BEAM_SIZE = 3  # besides greedy (beam 1), the captions of a beam search are compared


def _pool_matrix(size: int, cells: int) -> Tensor:
    """(cells, size): row i averages adaptive pooling's window i (floor(i * size / cells) to
    ceil((i + 1) * size / cells)), so ``matrix @ x`` pools the last axis of x as AdaptiveAvgPool."""
    matrix = torch.zeros(cells, size)
    for i in range(cells):
        first, end = (i * size) // cells, -((-(i + 1) * size) // cells)
        matrix[i, first:end] = 1.0 / (end - first)
    return matrix


class EncoderGraph(nn.Module):
    """images (B, 3, S, S), S the model's side -> (h, c): the captioner's ``start``, with its adaptive average
    pooling done as two matrix products (ONNX has no adaptive pooling to a grid that does not
    divide the feature map, as 3 x 3 into 2 x 2)."""

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__()
        self.model, side = model, CAPTIONING.side(config)
        encoder = model.encoder
        with torch.no_grad():
            height, width = encoder.trunk(torch.zeros(1, 3, side, side)).shape[-2:]
        grid = encoder.pool.output_size
        rows, cols = (grid, grid) if isinstance(grid, int) else grid
        self.register_buffer("rows", _pool_matrix(height, rows))
        self.register_buffer("cols", _pool_matrix(width, cols).T.contiguous())

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        encoder = self.model.encoder
        pooled = self.rows @ encoder.trunk(images) @ self.cols  # (B, C, rows, cols)
        _, (h, c) = self.model.decoder.step(encoder.project(pooled.flatten(1)), None)
        return h, c


class StepGraph(nn.Module):
    """(tokens, h, c) -> (log_probs, h_next, c_next): the captioner's ``step``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # the class's step, not the instance's: a serving runtime takes that over (models/runtimes.py)
        log_probs, (h_next, c_next) = type(self.model).step(self.model, tokens, (h, c))
        return log_probs, h_next, c_next


def encoder_example(model: nn.Module, config: Any) -> tuple[Tensor, ...]:
    side = CAPTIONING.side(config)
    return (torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0)),)


def step_example(model: nn.Module, config: Any) -> tuple[Tensor, ...]:
    lstm = model.decoder.lstm
    state = torch.zeros(lstm.num_layers, 2, lstm.hidden_size)
    return torch.full((2,), START_ID, dtype=torch.long), state, state.clone()


class ExportedCaptioner:
    """A captioner's exported parts with the model's ``start`` and ``step`` (captioning.CaptionSteps):
    ``encoder`` and ``step`` are the graphs (export.load_runner)."""

    def __init__(self, encoder: Callable[..., Any], step: Callable[..., Any]) -> None:
        self.encoder, self.run_step = encoder, step

    def start(self, images: Tensor) -> tuple[Tensor, Tensor]:
        h, c = self.encoder(images)
        return h, c

    def step(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        log_probs, h, c = self.run_step(tokens, *state)
        return log_probs, (h, c)


def assemble(runners: dict[str, Callable[..., Any]], record: dict[str, Any]) -> ExportedCaptioner:
    return ExportedCaptioner(runners["encoder"], runners["step"])


def figures(
    model: nn.Module, runners: dict[str, Callable[..., Any]], config: Any, samples: Sequence[np.ndarray], **_: Any
) -> dict[str, float]:
    """Greedy and beam-search captions of the sample images (RGB uint8, one batch) by the eager
    model and by the export: ``caption_disagreement`` the share of captions whose words differ,
    ``max_log_prob_diff`` the largest difference of a caption's log-probability. The images go to
    the model's device."""
    images = torch.stack([CAPTIONING.model_input(rgb, config) for rgb in samples]).to(device_of(model))
    exported, length = assemble(runners, {}), max_length_of(config)
    differ, total, diff = 0, 0, 0.0
    for beam in (1, PARITY_BEAM_SIZE):
        ours = beam_search(model, images, beam_size=beam, max_length=length)
        theirs = beam_search(exported, images, beam_size=beam, max_length=length)
        for a, b in zip(ours, theirs):
            total += 1
            differ += a[0].tokens != b[0].tokens
            diff = max(diff, abs(a[0].log_prob - b[0].log_prob))
    return {"caption_disagreement": differ / total, "max_log_prob_diff": diff}
