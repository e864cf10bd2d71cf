"""Segmentation losses: Dice + focal, combined with weights.

The Dice term is ``segmentation_models_pytorch.losses.DiceLoss`` (from logits, ``ignore_index``,
``smooth``), with optional per-class weights applied to smp's per-class losses. smp zeroes the
Dice loss of a class absent from the target (an empty mask costs nothing) but still counts it
in the mean over classes. The focal term is computed here (smp's FocalLoss has no per-class
weights): per pixel ``FL = -alpha_t * (1 - p_t)**gamma * log(p_t)``, averaged over non-ignored
pixels; with class weights ``w`` (multiclass) the average is ``sum(w[target] * FL) / sum(w[target])``,
as torch's weighted cross-entropy averages. Both terms are computed in float32, also under autocast.
Targets of the wrong shape, dtype or class range are refused with a message saying what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

MODES = ("binary", "multiclass", "multilabel")
SPECS = ("dice", "focal", "dice+focal")


@dataclass(frozen=True)
class SegLossConfig:
    """Weights of each term, mode, pixels to ignore, class weights (multiclass), focal shape."""

    mode: str = "multiclass"
    dice_weight: float = 1.0
    focal_weight: float = 1.0
    ignore_index: int | None = None
    class_weights: tuple[float, ...] | None = None
    focal_gamma: float = 2.0
    focal_alpha: float | None = None  # binary/multilabel: weight of positives (1 - alpha for negatives)
    smooth: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.dice_weight < 0 or self.focal_weight < 0 or self.dice_weight + self.focal_weight == 0:
            raise ValueError("dice_weight and focal_weight must be >= 0 and not both 0")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.focal_alpha is not None and not 0 <= self.focal_alpha <= 1:
            raise ValueError(f"focal_alpha must be in [0, 1], got {self.focal_alpha}")
        if self.class_weights is not None and any(w < 0 for w in self.class_weights):
            raise ValueError("class_weights must be >= 0")
        if self.class_weights is not None and self.mode != "multiclass":
            raise ValueError(f"class_weights apply to multiclass mode only, not {self.mode}")
        if self.focal_alpha is not None and self.mode == "multiclass":
            raise ValueError("focal_alpha applies to binary and multilabel modes; use class_weights in multiclass mode")


class _WeightedDice(DiceLoss):
    """smp's DiceLoss with its per-class losses averaged with class weights (plain mean without)."""

    def __init__(self, *args: object, class_weights: torch.Tensor | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.weights = class_weights

    def aggregate_loss(self, loss: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            return loss.mean()
        w = self.weights.to(loss.device)
        return (loss * w).sum() / w.sum().clamp_min(1e-12)


class DiceFocalLoss(nn.Module):
    """``dice_weight * Dice + focal_weight * Focal`` from raw logits (B, C, H, W).

    Targets: multiclass (B, H, W) int64 class ids; binary (B, H, W) or (B, 1, H, W) in {0, 1};
    multilabel (B, C, H, W) in {0, 1}. ``last_terms`` holds the two unweighted terms of the last call.
    """

    def __init__(self, config: SegLossConfig = SegLossConfig()) -> None:
        super().__init__()
        self.config = config
        weights = torch.tensor(config.class_weights, dtype=torch.float32) if config.class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.dice = _WeightedDice(
            config.mode, from_logits=True, ignore_index=config.ignore_index, smooth=config.smooth, class_weights=weights
        )
        self.last_terms: dict[str, float] = {}

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Raise ValueError naming what was expected when the target does not fit the logits."""
        cfg = self.config
        if logits.dim() != 4:
            raise ValueError(f"logits must be (B, C, H, W), got shape {tuple(logits.shape)}")
        b, c, h, w = logits.shape
        if cfg.mode == "multiclass":
            if tuple(target.shape) != (b, h, w):
                raise ValueError(
                    f"multiclass targets must be (B, H, W) = {(b, h, w)} class ids, got {tuple(target.shape)}"
                )
            if target.dtype.is_floating_point or target.dtype == torch.bool:
                raise ValueError(f"multiclass targets must be integer class ids, got {target.dtype}")
            if self.class_weights is not None and len(self.class_weights) != c:
                raise ValueError(f"{len(self.class_weights)} class_weights for {c} classes")
            ids = target[target != cfg.ignore_index] if cfg.ignore_index is not None else target
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c):
                raise ValueError(
                    f"target class ids must be in 0..{c - 1}"
                    + (f" or {cfg.ignore_index} (ignored)" if cfg.ignore_index is not None else "")
                    + f", got {int(ids.min())}..{int(ids.max())}"
                )
        elif cfg.mode == "binary":
            if c != 1 or tuple(target.shape) not in ((b, h, w), (b, 1, h, w)):
                raise ValueError(
                    f"binary mode needs (B, 1, H, W) logits and (B, H, W) or (B, 1, H, W) targets, "
                    f"got {tuple(logits.shape)} and {tuple(target.shape)}"
                )
        elif target.shape != logits.shape:
            raise ValueError(
                f"multilabel targets must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}"
            )

    def _focal(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.mode == "multiclass":
            valid = target != cfg.ignore_index if cfg.ignore_index is not None else torch.ones_like(target, dtype=bool)
            safe = torch.where(valid, target, torch.zeros_like(target))
            log_p = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)  # (B, H, W) log p_t
            alpha = 1.0
        else:
            target = target.view_as(logits).float()
            valid = target != cfg.ignore_index if cfg.ignore_index is not None else torch.ones_like(target, dtype=bool)
            safe = torch.where(valid, target, torch.zeros_like(target))
            log_p = -F.binary_cross_entropy_with_logits(logits, safe, reduction="none")
            alpha = (
                (cfg.focal_alpha * safe + (1 - cfg.focal_alpha) * (1 - safe)) if cfg.focal_alpha is not None else 1.0
            )
        loss = -alpha * (1 - log_p.exp()) ** cfg.focal_gamma * log_p
        weight = valid.float()
        if self.class_weights is not None:  # multiclass only (SegLossConfig checks)
            weight = weight * self.class_weights.to(logits.device)[safe]
        return (loss * weight).sum() / weight.sum().clamp_min(1e-12)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        self._check(logits, target)
        logits = logits.float()  # both terms in float32, also under autocast
        dice = self.dice(logits, target) if cfg.dice_weight else logits.new_zeros(())
        focal = self._focal(logits, target) if cfg.focal_weight else logits.new_zeros(())
        self.last_terms = {"dice": float(dice.detach()), "focal": float(focal.detach())}
        return cfg.dice_weight * dice + cfg.focal_weight * focal


def build_loss(spec: str, **kwargs: object) -> DiceFocalLoss:
    """ "dice", "focal" or "dice+focal"; ``kwargs`` fill SegLossConfig (the unnamed term gets weight 0)."""
    if spec not in SPECS:
        raise ValueError(f"unknown loss {spec!r}; choose one of {SPECS}")
    if spec == "dice":
        kwargs = {**kwargs, "focal_weight": 0.0}
    elif spec == "focal":
        kwargs = {**kwargs, "dice_weight": 0.0}
    return DiceFocalLoss(SegLossConfig(**kwargs))
