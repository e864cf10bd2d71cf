"""Pieces every trainer shares: device choice, optimiser + warmup/cosine schedule, resume
state, history plots."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.devices import pick_device  # noqa: F401  (the trainers' and tests' import)
from models.files import atomic_write_with

RESUME_FILE = "last.pt"
HISTORY_FILE = "history.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """``sgd`` (with momentum) or ``adamw`` over the parameters that train. ``params`` may be
    parameter groups (dicts with ``params`` and an ``lr_scale``: that group's lr is lr x lr_scale)."""
    items = list(params)
    if items and isinstance(items[0], dict):
        params = [
            {"params": [p for p in g["params"] if p.requires_grad], "lr": lr * g.get("lr_scale", 1.0)} for g in items
        ]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in items if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'sgd' or 'adamw'")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_factor: float = 0.02
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0.1x over ``warmup_steps``, then cosine decay to ``min_factor`` x lr."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    *,
    clip_grad: float | None = None,
) -> None:
    """Backward, optionally clip the gradient norm to ``clip_grad``, step (through the AMP grad
    scaler when there is one, unscaling before clipping) and advance the schedule."""
    optimizer.zero_grad(set_to_none=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()
    scheduler.step()


def restore_resume_state(
    state: Mapping[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    history: dict[str, list[float]],
) -> tuple[int, float, str]:
    """Load a saved state into the training objects; returns (next epoch, best metric, version)."""
    return restore_parts(state, {"model": model, "optimizer": optimizer, "scheduler": scheduler}, history=history)


def restore_parts(
    state: Mapping[str, Any], parts: Mapping[str, Any], *, history: dict[str, list[float]]
) -> tuple[int, float, str]:
    """restore_resume_state for any named objects with ``load_state_dict`` (e.g. a GAN's two
    networks and two optimisers); returns (next epoch, best metric, version).

    A checkpoint without one of ``parts`` (the run was started with other options, e.g. without
    a weight average) raises ValueError naming what is missing, before anything is restored."""
    missing = [key for key in parts if key not in state]
    if missing:
        raise ValueError(
            f"the checkpoint to resume has no {', '.join(missing)}: it was written by a run with "
            "other options; resume with the options it was started with, or start a new run "
            "(another run directory, or without --resume)"
        )
    for key, part in parts.items():
        part.load_state_dict(state[key])
    torch.set_rng_state(state["rng"])
    history.update({k: list(v) for k, v in state["history"].items()})
    return state["epoch"] + 1, state["best"], state["version"]


def save_resume_state(
    run_dir: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    history: Mapping[str, Sequence[float]],
    best: float,
    version: str = "1",
) -> None:
    """Everything ``--resume`` needs, written atomically to ``run_dir/last.pt``.

    Only tensors, numbers and strings go in, so it loads with ``weights_only=True``.
    """
    save_parts(
        run_dir,
        {"model": model, "optimizer": optimizer, "scheduler": scheduler},
        epoch=epoch,
        history=history,
        best=best,
        version=version,
    )


def save_parts(
    run_dir: Path,
    parts: Mapping[str, Any],
    *,
    epoch: int,
    history: Mapping[str, Sequence[float]],
    best: float,
    version: str = "1",
) -> None:
    """save_resume_state for any named objects with ``state_dict`` (see restore_parts)."""
    state = {
        **{key: part.state_dict() for key, part in parts.items()},
        "epoch": epoch,
        "history": {k: list(v) for k, v in history.items()},
        "best": best,
        "version": version,
        "rng": torch.get_rng_state(),
    }
    atomic_write_with(run_dir / RESUME_FILE, lambda tmp: torch.save(state, tmp))
    (run_dir / HISTORY_FILE).write_text(json.dumps(state["history"], indent=1))


def load_resume_state(run_dir: Path) -> dict[str, Any] | None:
    """The state saved by save_resume_state, or None if there is none (restricted unpickler)."""
    path = run_dir / RESUME_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def plot_history(history: Mapping[str, Sequence[float]], path: Path, *, title: str) -> Path:
    """PNG with one panel for the ``*loss*`` curves and one for the metrics, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = {k: v for k, v in history.items() if "loss" in k and v}
    metrics = {k: v for k, v in history.items() if "loss" not in k and k != "lr" and v}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, curves, label in ((axes[0], losses, "loss"), (axes[1], metrics, "metric")):
        for name, values in curves.items():
            ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if curves:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
