"""models/losses.py against values computed by hand (formulas written out here, not smp calls)."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import DiceFocalLoss, SegLossConfig, build_loss

# Two pixels, two classes. Pixel A: logits (2, 0), class 0. Pixel B: logits (0, 1), class 1.
LOGITS = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (B=1, C=2, H=1, W=2)
TARGET = torch.tensor([[[0, 1]]])  # (1, 1, 2)

pA0 = math.exp(2) / (math.exp(2) + 1)  # p(class 0) at A = 0.8808
pB1 = math.e / (1 + math.e)  # p(class 1) at B = 0.7311
pA1, pB0 = 1 - pA0, 1 - pB1


def focal(p_true: float, gamma: float = 2.0) -> float:
    return -((1 - p_true) ** gamma) * math.log(p_true)


def dice_loss(intersection: float, cardinality: float) -> float:
    return 1 - 2 * intersection / cardinality


FOCAL_A, FOCAL_B = focal(pA0), focal(pB1)
DICE_0 = dice_loss(pA0, (pA0 + pB0) + 1)  # class 0: target only at A
DICE_1 = dice_loss(pB1, (pA1 + pB1) + 1)  # class 1: target only at B


def test_dice_and_focal_values_match_the_hand_computation():
    loss = build_loss("dice+focal")
    total = loss(LOGITS, TARGET)
    assert loss.last_terms["focal"] == pytest.approx((FOCAL_A + FOCAL_B) / 2, rel=1e-5)
    assert loss.last_terms["dice"] == pytest.approx((DICE_0 + DICE_1) / 2, rel=1e-5)
    assert float(total) == pytest.approx((FOCAL_A + FOCAL_B) / 2 + (DICE_0 + DICE_1) / 2, rel=1e-5)


def test_term_weights():
    dice_only = build_loss("dice")(LOGITS, TARGET)
    focal_only = build_loss("focal")(LOGITS, TARGET)
    mixed = DiceFocalLoss(SegLossConfig(dice_weight=2.0, focal_weight=0.5))(LOGITS, TARGET)
    assert float(dice_only) == pytest.approx((DICE_0 + DICE_1) / 2, rel=1e-5)
    assert float(focal_only) == pytest.approx((FOCAL_A + FOCAL_B) / 2, rel=1e-5)
    assert float(mixed) == pytest.approx(2 * float(dice_only) + 0.5 * float(focal_only), rel=1e-5)


def test_ignored_pixels_count_for_nothing():
    target = torch.tensor([[[0, 255]]])  # B ignored
    loss = build_loss("dice+focal", ignore_index=255)
    value = float(loss(LOGITS, target))
    # focal over A only; dice: class 0 over A only, class 1 absent from the target -> 0, mean of 2 classes
    expected = FOCAL_A + dice_loss(pA0, pA0 + 1) / 2
    assert value == pytest.approx(expected, rel=1e-5)
    other = LOGITS.clone()
    other[0, :, 0, 1] = torch.tensor([-5.0, 7.0])  # change the ignored pixel's logits
    assert float(loss(other, target)) == pytest.approx(value, rel=1e-6)


def test_empty_mask_class_costs_no_dice():
    target = torch.zeros(1, 1, 2, dtype=torch.long)  # class 1 absent everywhere
    loss = build_loss("dice")
    value = float(loss(LOGITS, target))
    # class 0 present at both pixels; class 1 absent -> its dice loss is zeroed; mean over 2 classes
    assert value == pytest.approx(dice_loss(pA0 + pB0, (pA0 + pB0) + 2) / 2, rel=1e-5)


def test_perfect_prediction_gives_near_zero_loss():
    logits = torch.tensor([[[[30.0, -30.0]], [[-30.0, 30.0]]]])
    assert float(build_loss("dice+focal")(logits, TARGET)) < 1e-6


def test_class_weights_weight_both_terms():
    loss = build_loss("dice+focal", class_weights=(1.0, 3.0))
    loss(LOGITS, TARGET)
    # Weighted mean, as torch's weighted cross-entropy: sum(w * FL) / sum(w).
    assert loss.last_terms["focal"] == pytest.approx((1 * FOCAL_A + 3 * FOCAL_B) / 4, rel=1e-5)
    assert loss.last_terms["dice"] == pytest.approx((1 * DICE_0 + 3 * DICE_1) / 4, rel=1e-5)


def test_binary_mode_from_logits():
    logits = torch.tensor([[[[2.0, -1.0]]]])  # one channel: p = sigmoid
    target = torch.tensor([[[1, 0]]])
    p1, p2 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))
    loss = build_loss("dice+focal", mode="binary")
    loss(logits, target)
    assert loss.last_terms["focal"] == pytest.approx((focal(p1) + focal(1 - p2)) / 2, rel=1e-5)
    assert loss.last_terms["dice"] == pytest.approx(dice_loss(p1, p1 + p2 + 1), rel=1e-5)


def test_gradients_are_finite():
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    target = torch.randint(0, 4, (2, 16, 16))
    target[0, :3] = 255
    build_loss("dice+focal", ignore_index=255)(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "panoptic"},
        {"dice_weight": 0, "focal_weight": 0},
        {"focal_gamma": -1},
        {"class_weights": (1.0, -2.0)},
        {"mode": "binary", "class_weights": (1.0, 2.0)},
        {"focal_alpha": 0.25},
    ],
)
def test_bad_configs(kwargs):
    with pytest.raises(ValueError):
        SegLossConfig(**kwargs)


def test_unknown_spec_lists_the_options():
    with pytest.raises(ValueError, match="dice\\+focal"):
        build_loss("lovasz")


@pytest.mark.parametrize(
    ("logits", "target", "kwargs", "message"),
    [
        (LOGITS, torch.tensor([[0, 1]]), {}, "must be \\(B, H, W\\)"),
        (LOGITS, TARGET.float(), {}, "integer class ids"),
        (LOGITS, torch.tensor([[[0, 2]]]), {}, "in 0..1, got 0..2"),
        (LOGITS, torch.tensor([[[0, 7]]]), {"ignore_index": 255}, "or 255 \\(ignored\\)"),
        (LOGITS, TARGET, {"class_weights": (1.0, 2.0, 3.0)}, "3 class_weights for 2 classes"),
        (LOGITS, TARGET, {"mode": "binary"}, "binary mode needs"),
        (LOGITS, TARGET, {"mode": "multilabel"}, "logits' shape"),
        (LOGITS[0], TARGET, {}, "\\(B, C, H, W\\)"),
    ],
)
def test_targets_that_do_not_fit_are_refused_with_what_was_expected(logits, target, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_loss("dice+focal", **kwargs)(logits, target)


def test_terms_are_float32_under_autocast():
    loss = build_loss("dice+focal")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(LOGITS.bfloat16(), TARGET)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(loss(LOGITS, TARGET)), rel=2e-2)
