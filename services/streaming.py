"""Helpers every streaming RPC shares (typed and KServe): deadlines, per-item errors and ordered,
pipelined streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from models.errors import CvtasksError
from services.errors import status_for, status_message
from services.pb import common_pb2

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def deadline_of(context: Any, limits: Any = None) -> float | None:
    """The RPC's deadline as a time.monotonic() value. Without ``limits`` (streams): the client's,
    None when it set none. With ``limits`` (a ServingConfig; unary calls): the client's cut to
    ``limits.max_deadline_s``, or ``limits.default_deadline_s`` when it set none."""
    remaining = context.time_remaining()
    if limits is not None:
        remaining = limits.default_deadline_s if remaining is None else min(remaining, limits.max_deadline_s)
    return None if remaining is None else time.monotonic() + remaining


def item_error(exc: CvtasksError) -> common_pb2.ItemError:
    """A domain error as a per-item status inside a stream (the stream itself goes on)."""
    code = status_for(exc)
    return common_pb2.ItemError(code=code.value[0] if code else 13, message=status_message(exc))


async def ordered_stream(
    requests: AsyncIterator[Req],
    handle: Callable[[Req], Awaitable[Resp]],
    *,
    on_error: Callable[[Req, common_pb2.ItemError], Resp],
    window: int = 32,
) -> AsyncIterator[Resp]:
    """Handle up to ``window`` requests concurrently (so the batcher can batch them) and yield
    responses in request order. A domain error becomes that item's error response; anything
    else ends the stream (INTERNAL through the interceptor)."""

    async def guarded(request: Req) -> Resp:
        try:
            return await handle(request)
        except CvtasksError as exc:
            return on_error(request, item_error(exc))

    pending: asyncio.Queue[asyncio.Task[Resp] | None] = asyncio.Queue(maxsize=window)
    feed_error: list[BaseException] = []

    async def feed() -> None:
        try:
            async for request in requests:
                await pending.put(asyncio.ensure_future(guarded(request)))
        except BaseException as exc:  # noqa: BLE001 — re-raised in the consumer below
            feed_error.append(exc)
        finally:
            await pending.put(None)

    feeder = asyncio.ensure_future(feed())
    try:
        while (task := await pending.get()) is not None:
            yield await task
        if feed_error and not isinstance(feed_error[0], asyncio.CancelledError):
            raise feed_error[0]
    finally:
        feeder.cancel()
        while not pending.empty():
            if (task := pending.get_nowait()) is not None:
                task.cancel()
