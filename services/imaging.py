"""Request images -> RGB arrays, off the event loop. Shared by every task's servicer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from models.errors import InvalidInputError
from models.preprocessing import decode_image, image_from_pixels
from services.pb import common_pb2

T = TypeVar("T")


def image_from_proto(image: common_pb2.Image, *, max_pixels: int) -> np.ndarray:
    """``cvtasks.v1.Image`` (encoded bytes or raw pixels) -> RGB uint8 (H, W, 3).

    Raises DecodeError / ImageTooLargeError / InvalidInputError with a message saying what to fix.
    """
    source = image.WhichOneof("source")
    if source == "encoded":
        return decode_image(image.encoded, max_pixels=max_pixels)
    if source == "raw":
        raw = image.raw
        return image_from_pixels(
            raw.data, height=raw.height, width=raw.width, channels=raw.channels, max_pixels=max_pixels
        )
    raise InvalidInputError(
        "the request has no image: set image.encoded (JPEG, PNG, WebP, BMP or TIFF bytes) "
        "or image.raw (uint8 HWC pixels with height, width, channels)"
    )


class Decoder:
    """A thread pool that decodes request images and runs other CPU-bound per-request work.

    OpenCV releases the GIL while decoding, so a few threads decode in parallel.
    """

    def __init__(self, *, workers: int, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def decode(self, image: common_pb2.Image, then: Callable[[np.ndarray], T]) -> tuple[np.ndarray, T]:
        """Decode ``image`` and apply ``then`` (e.g. to_tensor) in the pool; returns (array, then(array))."""

        def work() -> tuple[np.ndarray, T]:
            array = image_from_proto(image, max_pixels=self.max_pixels)
            return array, then(array)

        return await self.run(work)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
