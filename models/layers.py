"""Small building blocks the tiny CPU models share (the tiny detector's backbone, the tiny classifier)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def conv_block(in_ch: int, width: int) -> list[nn.Module]:
    """A stride-2 3x3 conv and a 3x3 conv, each with batch norm and ReLU: halves H and W, ``width``
    channels out. A flat list, so a caller may nest it (``nn.Sequential(*block)``) or not."""
    return [
        nn.Conv2d(in_ch, width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]


def check_fit(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str) -> None:
    """ValueError unless ``state`` has every tensor of ``own`` in its shape; ``what`` names the
    weights and the module in the message ("encoder weights x.pt do not fit a ResNet ...")."""
    missing = [k for k in own if k not in state]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or mismatched:
        raise ValueError(
            f"{what}: {len(missing)} missing (e.g. {missing[:2]}), {len(mismatched)} of another shape "
            f"(e.g. {mismatched[:2]})"
        )
