"""models/train/common.py: the shared optimiser step (clipping) and the warmup + cosine schedule."""

from __future__ import annotations

import pytest
import torch

from models.train.common import build_optimizer, optimizer_step, warmup_cosine


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = build_optimizer(model.parameters(), name="sgd", lr=1.0, weight_decay=0.0)
    return model, optimizer, warmup_cosine(optimizer, warmup_steps=1, total_steps=10)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_optimizer_step_clips_the_gradient_norm_when_asked(clip):
    model, optimizer, scheduler = _setup()
    before = model.weight.detach().clone()
    loss = (model(torch.full((8, 4), 100.0)) ** 2).mean()
    optimizer_step(loss, optimizer, scheduler, None, clip_grad=clip)
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    if clip is None:
        assert norm > 100
    else:
        assert norm == pytest.approx(clip, rel=1e-4)
    assert not torch.equal(before, model.weight)


def test_warmup_then_cosine_to_zero():
    _, optimizer, scheduler = _setup()
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] < rates[1] and rates[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[1:], rates[2:])) and rates[-1] < 0.1
