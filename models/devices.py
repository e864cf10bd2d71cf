"""Which device a model runs on (serving, batch jobs and training alike)."""

from __future__ import annotations

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given ("cpu", "cuda", "cuda:1"), else CUDA when available, else CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} asked for, but CUDA is not available here; use 'cpu'")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
