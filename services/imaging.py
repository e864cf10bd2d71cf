"""Request images -> RGB arrays, off the event loop: the one decode step of every transport.

A transport hands over ``ImageData``: the bytes of an encoded file, or ``RawPixels``. Nothing
here knows a wire format (the typed codecs' ``image_data`` reads a ``cvtasks.v1.Image``).

With batched JPEG decoding on (``--gpu-decode``; on by default when models serve on CUDA), the
JPEGs of concurrent requests are decoded together on the device (models/jpeg_batch.py: nvJPEG
through torchvision), gathered by a DynamicBatcher (services/batching.py: no wait when idle,
what queued during a decode forms the next batch). Other formats and every JPEG that path
refuses or fails on are decoded by the thread pool, each alone, as without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from models.devices import pick_device
from models.image_header import detect_format
from models.jpeg_batch import batchable_jpeg, decode_jpegs
from models.preprocessing import decode_image, image_from_pixels, probe_image_size
from services.batching import DynamicBatcher

T = TypeVar("T")

GPU_DECODE_MODES = ("auto", "on", "off")
MAX_DECODE_BATCH = 32  # JPEGs decoded in one call at most
# What may wait for the batched decoder; admission control (services/host.py) bounds requests
# long before this, so a full queue is a bug and is answered by the thread pool anyway.
_MAX_DECODE_QUEUE = 4096


@dataclass(frozen=True)
class RawPixels:
    """uint8 HWC pixels: ``channels`` 1 (gray), 3 (RGB) or 4 (RGBA); ``data`` holds H * W * C bytes."""

    data: bytes
    height: int
    width: int
    channels: int


ImageData = bytes | RawPixels


def decode(image: ImageData, *, max_pixels: int) -> np.ndarray:
    """``image`` -> RGB uint8 (H, W, 3). Raises DecodeError / ImageTooLargeError /
    InvalidInputError with a message saying what to fix (models/preprocessing.py)."""
    if isinstance(image, RawPixels):
        return image_from_pixels(
            image.data, height=image.height, width=image.width, channels=image.channels, max_pixels=max_pixels
        )
    return decode_image(image, max_pixels=max_pixels)


def pixels_of(image: ImageData, *, max_pixels: int) -> int:
    """The pixels ``image`` will decode to, from its header or raw size alone (no decoding): what
    admission control charges. A file whose header gives no size but that may decode is charged
    ``max_pixels`` (the most it can be); one that will be refused at once is charged nothing."""
    if isinstance(image, RawPixels):
        return max(0, image.height) * max(0, image.width)
    if detect_format(image) is None:
        return 0
    size = probe_image_size(image)
    if size is None:
        return max_pixels
    return size[0] * size[1] if size[0] * size[1] <= max_pixels else 0  # larger: refused before decoding


def check_gpu_decode_mode(mode: str) -> None:
    """ValueError naming the modes unless ``mode`` is one of GPU_DECODE_MODES."""
    if mode not in GPU_DECODE_MODES:
        raise ValueError(f"gpu_decode must be one of {', '.join(GPU_DECODE_MODES)}, got {mode!r}")


def jpeg_batch_device(mode: str, serving_device: str | None) -> torch.device | None:
    """The device JPEGs are decoded on in batches, or None (every image in the thread pool).

    ``mode``: "off"; "on" (on the serving device, CUDA or CPU: the CPU is for tests); "auto" (on
    when the serving device is CUDA). ``serving_device``: what the models serve on (None: CUDA
    when available, as the model host picks)."""
    check_gpu_decode_mode(mode)
    if mode == "off":
        return None
    try:
        device = pick_device(serving_device)
    except ValueError:  # a GPU this machine lacks: the host serves on the CPU, decoding stays there
        return None
    return None if mode == "auto" and device.type != "cuda" else device


class Decoder:
    """A thread pool that decodes request images and runs other CPU-bound per-request work,
    and, given ``jpeg_device``, a batched JPEG decoder on that device (see the module docstring).

    OpenCV releases the GIL while decoding, so a few threads decode in parallel.
    """

    def __init__(self, *, workers: int, max_pixels: int, jpeg_device: str | torch.device | None = None) -> None:
        self.max_pixels = max_pixels
        self.jpeg_device = None if jpeg_device is None else torch.device(jpeg_device)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        # Successful batched decodes, for tests and benchmarks: calls, images, the largest call.
        self.decode_batches = self.batched_images = self.largest_decode_batch = 0
        self._jpegs: DynamicBatcher[bytes, np.ndarray] | None = None
        if self.jpeg_device is not None:
            self._jpegs = DynamicBatcher(
                self._decode_jpegs,
                max_batch_size=MAX_DECODE_BATCH,
                max_queue_size=_MAX_DECODE_QUEUE,
                name=f"jpeg-decode-{self.jpeg_device}",
            )

    def _decode_jpegs(self, datas: list[bytes]) -> list[np.ndarray]:
        """The batcher's handler (its thread): one call of the batched decoder."""
        arrays = decode_jpegs(datas, device=self.jpeg_device, max_pixels=self.max_pixels)
        self.decode_batches += 1
        self.batched_images += len(arrays)
        self.largest_decode_batch = max(self.largest_decode_batch, len(arrays))
        return arrays

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def pixels(self, image: ImageData) -> int:
        """What decoding ``image`` will hold, in pixels (see pixels_of)."""
        return pixels_of(image, max_pixels=self.max_pixels)

    async def decode(self, image: ImageData, then: Callable[[np.ndarray], T]) -> tuple[np.ndarray, T]:
        """Decode ``image`` (a batchable JPEG by the batched decoder when it is on, else in the
        pool) and apply ``then`` (the task's model input) in the pool; returns (array, then(array))."""
        array = await self._batched(image) if self._jpegs is not None else None

        def work() -> tuple[np.ndarray, T]:
            rgb = decode(image, max_pixels=self.max_pixels) if array is None else array
            return rgb, then(rgb)

        return await self.run(work)

    async def _batched(self, image: ImageData) -> np.ndarray | None:
        """``image`` decoded by the batched JPEG decoder, or None: not a batchable JPEG, or that
        decoder failed on it (the pool decodes it then, and raises the CPU path's error). The
        header checks run here, on the event loop (they read headers only), and raise at once."""
        if isinstance(image, RawPixels) or detect_format(image) != "jpeg":
            return None  # the pool decodes it and makes every check there
        if not batchable_jpeg(image, max_pixels=self.max_pixels):
            return None
        await self._jpegs.start()  # no-op once started
        try:
            return await self._jpegs.submit(image)
        except Exception:  # noqa: BLE001 — this file alone goes to the CPU decoder
            return None

    async def stop(self) -> None:
        """Stop the batched JPEG decoder (its queued files are decoded first), then the pool."""
        if self._jpegs is not None:
            await self._jpegs.stop(drain=True)
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
