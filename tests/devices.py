"""Where the test servers run, and how closely two runs of one model must agree there.

Test servers pick their device as `cvtasks serve` does: CUDA when the machine has it, so the same
tests exercise the CUDA path on a GPU host. On the CPU two runs of one model on one input agree
to float rounding. On CUDA they agree only approximately once the batch differs (a request
batched with others, an interpolation path against single images): the kernels chosen depend on
the batch shape, and convolutions run in TF32 by default.
"""

from __future__ import annotations

import numpy as np

from models.train.common import pick_device

SERVING_DEVICE = pick_device(None)
ON_CUDA = SERVING_DEVICE.type == "cuda"
BOX_ATOL = 0.5 if ON_CUDA else 1e-3  # pixels
SCORE_ATOL = 1e-2 if ON_CUDA else 1e-4  # probabilities and log-probabilities
PIXEL_ATOL = 2 if ON_CUDA else 0  # uint8 levels of generated images


def assert_labels_agree(a: np.ndarray, b: np.ndarray) -> None:
    """Two label maps of one model on one image: identical on the CPU, all but 0.1% of pixels on CUDA."""
    assert a.shape == b.shape
    if ON_CUDA:
        assert (a == b).mean() >= 0.999, f"only {(a == b).mean():.4f} of the pixels agree"
    else:
        np.testing.assert_array_equal(a, b)


def assert_area_fractions_agree(a: list[dict], b: list[dict]) -> None:
    """Per-image class areas ({class: {"fraction", "pixels"}}) of two runs of one segmenter:
    identical on the CPU, each fraction within 0.005 on CUDA (seen: 0.0011 apart on an H200)."""
    if not ON_CUDA:
        assert a == b
        return
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in set(x) | set(y):
            fx, fy = (d.get(name, {}).get("fraction", 0.0) for d in (x, y))
            assert abs(fx - fy) <= 5e-3, f"{name}: area fraction {fx} against {fy}"


def assert_images_agree(a: np.ndarray, b: np.ndarray) -> None:
    """Two generated images of one latent: identical on the CPU, within PIXEL_ATOL levels on CUDA."""
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max()
    assert diff <= PIXEL_ATOL, f"pixels differ by up to {diff} levels"
