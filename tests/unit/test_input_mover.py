"""models/task.py InputMover: the serving batcher's prepare stage (inputs to the replica's device).

The recursion (what moves, what passes unchanged) runs on the CPU, with the meta device as the
target; the CUDA path (pinned copies on a stream of their own, the compute stream waiting for
them) runs only where CUDA is."""

from __future__ import annotations

import pytest
import torch

from models.segmentation import SegmentOptions
from models.task import InputMover


def test_tensors_move_at_any_depth_and_other_objects_pass_unchanged():
    options = SegmentOptions()
    inputs = [torch.ones(3, 4, 4), [torch.zeros(2), "text"], (torch.zeros(1), 7), {"z": torch.zeros(5), "o": options}]
    moved, copied = InputMover("meta").move(inputs)
    assert copied is None
    assert moved[0].device.type == "meta" and moved[0].shape == (3, 4, 4)
    assert isinstance(moved[1], list) and moved[1][0].device.type == "meta" and moved[1][1] == "text"
    assert isinstance(moved[2], tuple) and moved[2][0].device.type == "meta" and moved[2][1] == 7
    assert moved[3]["z"].device.type == "meta" and moved[3]["o"] is options


def test_on_the_cpu_inputs_stay_the_same_tensors():
    x = torch.rand(3, 8, 8)
    mover = InputMover("cpu")
    moved, copied = mover.move([x])
    assert moved[0] is x and copied is None
    mover.ready(copied)  # nothing to wait for


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the copy-stream path needs CUDA")
def test_cuda_copies_run_on_their_own_stream_and_the_compute_stream_waits_for_them():
    mover = InputMover("cuda")
    assert mover.stream is not None and mover.stream != torch.cuda.current_stream()
    for i in range(20):  # large copies, used at once: a missing wait would read stale memory
        x = torch.full((4, 1024, 1024), float(i))
        moved, copied = mover.move([x, "kept"])
        assert moved[0].device.type == "cuda" and moved[1] == "kept"
        assert copied is not None and copied.tensors == [moved[0]]
        mover.ready(copied)
        assert (moved[0] * 2).sum().item() == 2 * i * x.numel()
    # an input already on the device is not copied again
    on_device = torch.ones(3, device="cuda")
    moved, _ = mover.move([on_device])
    assert moved[0] is on_device
