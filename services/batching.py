"""The dynamic batcher: many concurrent requests -> few model calls.

One asyncio future per request. A collector task takes the first queued item and whatever else
is queued (at most ``max_batch_size``); with ``max_delay_s`` > 0 it also waits that long for
more. The default is no wait (Triton's too): an idle model runs a lone request at once, and the
requests that arrive while a batch computes queue up and form the next batch, so batches grow
with the load by themselves. It drops items whose caller gave up
(cancelled) or whose deadline passed, and runs the handler on the rest in a worker thread
(off the event loop, under ``torch.inference_mode``). When a batch fails, its items run again
one by one (models/isolation.py), so a request whose input breaks the model fails alone and the
others of its batch are answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from models.isolation import Failure, run_isolated
from services.errors import DeadlineExceededError, QueueFullError, UnavailableError

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[In, Out]):
    """``await submit(item)`` -> ``handler([items...])[i]``, batched.

    handler: called in a worker thread with 1..max_batch_size items; must return one output
    per item, in order. max_delay_s: how long the first item of a batch waits for company (default
    0: none; what queued while the previous batch computed is batched all the same).
    max_queue_size: queued items beyond this fail at once with QueueFullError.
    on_batch: optional ``(batch_size, seconds)`` callback after each handler call.
    """

    def __init__(
        self,
        handler: Callable[[list[In]], list[Out]],
        *,
        max_batch_size: int = 8,
        max_delay_s: float = 0.0,
        max_queue_size: int = 64,
        name: str = "model",
        executor: concurrent.futures.Executor | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        self.handler, self.name, self.on_batch = handler, name, on_batch
        self.max_batch_size, self.max_delay_s, self.max_queue_size = max_batch_size, max_delay_s, max_queue_size
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")
        self._queue: asyncio.Queue[_Pending[In, Out]] | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        # Items taken off the queue and not yet answered: the batch being gathered or computed.
        self._held: list[_Pending[In, Out]] = []

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue(maxsize=self.max_queue_size)
            self._task = asyncio.create_task(self._collect(), name=f"batcher-{self.name}")
            self._task.add_done_callback(self._collector_done)

    def _collector_done(self, task: asyncio.Task) -> None:
        """If the collector dies of a bug, fail its waiters instead of leaving them hanging."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("batcher %s collector crashed", self.name, exc_info=task.exception())
        self._closing = True
        self._fail_all(UnavailableError(f"model {self.name}: batching worker crashed; retry"))

    def _fail_all(self, exc: Exception) -> None:
        leftovers, self._held = list(self._held), []
        while self._queue is not None and not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def stop(self, *, drain: bool = True) -> None:
        """Stop taking requests; with ``drain`` finish the queued ones first, else fail them."""
        self._closing = True
        if self._task is None:
            return
        if drain:
            while not self._task.done() and (self._queue.qsize() or self._held):
                await asyncio.sleep(0.005)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._fail_all(UnavailableError(f"model {self.name} is shutting down; retry"))
        if self._own_executor:
            self._executor.shutdown(wait=True)
        self._task = None

    async def submit(self, item: In, *, deadline: float | None = None) -> Out:
        """Queue ``item`` and wait for its output. QueueFullError at once when the queue is full."""
        if self._queue is None or self._closing:
            raise UnavailableError(f"model {self.name} is not accepting requests (not started or stopping)")
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError(f"model {self.name}: the request's deadline had passed before it was queued")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, future, deadline))
        except asyncio.QueueFull:
            raise QueueFullError(
                f"model {self.name}: request queue is full ({self.max_queue_size} waiting); retry later"
            ) from None
        return await future  # cancelling the caller cancels the future; the collector skips it

    async def _next_batch(self) -> list[_Pending[In, Out]]:
        """Gather a batch into ``self._held`` (visible to stop(), so nothing taken is lost)."""
        batch = self._held
        batch.append(await self._queue.get())
        if self.max_delay_s == 0:  # no waiting: the first item and what queued beside it
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            return batch
        end = time.monotonic() + self.max_delay_s
        while len(batch) < self.max_batch_size:
            remaining = end - time.monotonic()
            if remaining <= 0:
                while len(batch) < self.max_batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    def _live(self, batch: list[_Pending[In, Out]]) -> list[_Pending[In, Out]]:
        """Drop cancelled callers; fail expired deadlines without computing them."""
        now, live = time.monotonic(), []
        for pending in batch:
            if pending.future.done():
                continue
            if pending.deadline is not None and now >= pending.deadline:
                waited = (now - pending.enqueued) * 1000
                pending.future.set_exception(
                    DeadlineExceededError(
                        f"deadline passed after {waited:.0f} ms in the queue of model {self.name}; "
                        "raise the deadline or lower the load"
                    )
                )
                continue
            live.append(pending)
        return live

    def _call(self, items: list[In]) -> list[Out | Failure]:
        with torch.inference_mode():
            return run_isolated(self.handler, items)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._held = []
            batch = self._held = self._live(await self._next_batch())
            if not batch:
                continue
            started = time.perf_counter()
            outputs = await loop.run_in_executor(self._executor, self._call, [p.item for p in batch])
            for pending, output in zip(batch, outputs):
                if pending.future.done():
                    continue
                if isinstance(output, Failure):
                    pending.future.set_exception(output.error)
                else:
                    pending.future.set_result(output)
            self._held = []
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), time.perf_counter() - started)
                except Exception:  # noqa: BLE001 — a metrics hook must not stop the batcher
                    log.exception("batcher %s: on_batch hook failed", self.name)
