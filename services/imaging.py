"""Request images -> RGB arrays, off the event loop: the one decode step of every transport.

A transport hands over ``ImageData``: the bytes of an encoded file, or ``RawPixels``. Nothing
here knows a wire format (the typed codecs' ``image_data`` reads a ``cvtasks.v1.Image``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from models.image_header import detect_format
from models.preprocessing import decode_image, image_from_pixels, probe_image_size

T = TypeVar("T")


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


class Decoder:
    """A thread pool that decodes request images and runs other CPU-bound per-request work.

    OpenCV releases the GIL while decoding, so a few threads decode in parallel.
    """

    def __init__(self, *, workers: int, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def pixels(self, image: ImageData) -> int:
        """What decoding ``image`` will hold, in pixels (see pixels_of)."""
        return pixels_of(image, max_pixels=self.max_pixels)

    async def decode(self, image: ImageData, then: Callable[[np.ndarray], T]) -> tuple[np.ndarray, T]:
        """Decode ``image`` and apply ``then`` (the task's model input) in the pool; returns
        (array, then(array))."""

        def work() -> tuple[np.ndarray, T]:
            array = decode(image, max_pixels=self.max_pixels)
            return array, then(array)

        return await self.run(work)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
