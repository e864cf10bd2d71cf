"""Request images -> RGB arrays, off the event loop. Shared by every task's servicer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from models.errors import InvalidInputError
from models.image_header import detect_format
from models.preprocessing import decode_image, image_from_pixels, probe_image_size
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


def pixels_of(image: common_pb2.Image, *, max_pixels: int) -> int:
    """The pixels ``image`` will decode to, from its header or raw size alone (no decoding): what
    admission control charges. A file whose header gives no size but that may decode is charged
    ``max_pixels`` (the most it can be); one that will be refused at once is charged nothing."""
    source = image.WhichOneof("source")
    if source == "raw":
        return max(0, image.raw.height) * max(0, image.raw.width)
    if source != "encoded" or detect_format(image.encoded) is None:
        return 0
    size = probe_image_size(image.encoded)
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

    def pixels(self, image: common_pb2.Image) -> int:
        """What decoding ``image`` will hold, in pixels (see pixels_of)."""
        return pixels_of(image, max_pixels=self.max_pixels)

    async def decode(self, image: common_pb2.Image, then: Callable[[np.ndarray], T]) -> tuple[np.ndarray, T]:
        """Decode ``image`` and apply ``then`` (e.g. to_tensor) in the pool; returns (array, then(array))."""

        def work() -> tuple[np.ndarray, T]:
            array = image_from_proto(image, max_pixels=self.max_pixels)
            return array, then(array)

        return await self.run(work)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
