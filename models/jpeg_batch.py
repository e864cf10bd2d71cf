"""Decoding many JPEGs in one call: nvJPEG on a CUDA device, or libjpeg-turbo on the CPU.

``torchvision.io.decode_jpeg`` takes a list of encoded files and a device; on CUDA it decodes
them together with nvJPEG, on the CPU one by one (that is how the serving logic around it is
tested without a GPU). Only ordinary JPEGs go this way: 8-bit, 3-component (YCbCr), baseline or
progressive (``batchable_jpeg``). Everything else, grayscale and CMYK included, and every file
this path fails on, is decoded by ``decode_image`` (models/preprocessing.py), the one CPU
decoder, which also gives the error message a bad file gets.

Both paths run the same checks: ``check_encoded`` before decoding (format, the header's size
against ``max_pixels``, truncation) and ``finish_decoded`` after (the decoded size, the EXIF
orientation), so a result differs from the CPU path's only by the decoders' arithmetic:

- CPU (torchvision's libjpeg-turbo vs OpenCV's): identical on the files measured (max abs
  difference 0 over 4 sizes x 3 qualities x 3 chroma subsamplings, PIL- and OpenCV-encoded);
  ``CPU_TOLERANCE`` leaves a margin for other libjpeg builds.
- CUDA (nvJPEG): its IDCT and chroma upsampling differ from libjpeg-turbo's. ``CUDA_TOLERANCE``
  is a bound on the mean and on the 99.9th percentile of the absolute difference, NOT measured
  here yet (no GPU was lent); the CUDA-only test checks it where a GPU is.

torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec (not a dependency
here yet); ``decode_jpegs`` is the one place to change when they go.

The pixels are copied back to the host (RGB uint8 HWC numpy): every task's ``model_input``
takes that, so what moves off the CPU is the decode, not the copy. benchmarks/gpu_suite.py
measures the copy (``copy_to_host_ms_per_image``); it has not run on a GPU yet.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.image_header import jpeg_frame
from models.preprocessing import check_encoded, finish_decoded


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted |batched - CPU path| over the uint8 pixels of one image, in levels."""

    max_abs: int  # every pixel (CPU) or the 99.9th percentile (CUDA)
    mean_abs: float


CPU_TOLERANCE = Tolerance(max_abs=2, mean_abs=0.5)
CUDA_TOLERANCE = Tolerance(max_abs=24, mean_abs=1.5)  # not measured yet: see the module docstring
_BATCHABLE_FRAMES = frozenset({"baseline", "progressive"})


def batchable_jpeg(data: bytes, *, max_pixels: int) -> bool:
    """Run the CPU path's pre-decode checks on ``data`` (raising its DecodeError /
    ImageTooLargeError), then say whether the batched decoder takes it: an 8-bit, 3-component,
    baseline or progressive JPEG. False: decode it with ``decode_image``."""
    if check_encoded(data, max_pixels=max_pixels) != "jpeg":
        return False
    frame = jpeg_frame(data)
    return frame is not None and frame[0] in _BATCHABLE_FRAMES and frame[1:] == (8, 3)


def decode_jpegs(datas: Sequence[bytes], *, device: str | torch.device, max_pixels: int) -> list[np.ndarray]:
    """Batchable JPEG files (see ``batchable_jpeg``) -> upright RGB uint8 (H, W, 3) arrays on the
    host, in order, decoded together on ``device``. Raises (RuntimeError from torchvision,
    ImageTooLargeError) when any of them fails: the caller reruns them one by one
    (models/isolation.py) and decodes a failing one with ``decode_image``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # frombuffer over read-only bytes: never written
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to torchcodec
        encoded = [torch.frombuffer(data, dtype=torch.uint8) for data in datas]
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    arrays = [np.ascontiguousarray(chw.permute(1, 2, 0).cpu().numpy()) for chw in decoded]
    return [finish_decoded(rgb, data, max_pixels=max_pixels) for rgb, data in zip(arrays, datas, strict=True)]


def difference(batched: np.ndarray, reference: np.ndarray) -> tuple[int, float, float]:
    """(max, 99.9th percentile, mean) of |batched - reference| in uint8 levels; shapes must match."""
    if batched.shape != reference.shape:
        raise ValueError(f"shapes differ: {batched.shape} vs {reference.shape}")
    diff = np.abs(batched.astype(np.int16) - reference.astype(np.int16))
    return int(diff.max()), float(np.percentile(diff, 99.9)), float(diff.mean())
