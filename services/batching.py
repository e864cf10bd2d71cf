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

With a ``prepare`` stage (serving: copying inputs to the GPU) batches overlap: while batch N
computes, what arrives is taken as batch N+1 and prepared in a thread of its own, so the model
starts N+1 as soon as N ends. At most one batch is prepared ahead (what arrives beyond it stays
queued), and deadlines and cancellations are checked again just before it computes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from models.isolation import Failure, run_isolated
from services.errors import DeadlineExceededError, QueueFullError, UnavailableError

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In, Out]):
    item: In  # replaced by the prepared item once the prepare stage has run
    future: asyncio.Future
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[In, Out]):
    """``await submit(item)`` -> ``handler([items...])[i]``, batched.

    handler: called in a worker thread with 1..max_batch_size items; must return one output
    per item, in order. max_delay_s: how long the first item of a batch waits for company (default
    0: none; what queued while the previous batch computed is batched all the same).
    max_queue_size: queued items beyond this fail at once with QueueFullError.
    prepare: optional ``items -> prepared items`` (one per item, in order), run in a thread of its
    own while the batch before computes; the handler gets the prepared items. An item whose
    prepare fails gets that error alone (as in the handler).
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
        prepare: Callable[[list[In]], list[In]] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        self.handler, self.prepare, self.name, self.on_batch = handler, prepare, name, on_batch
        self.max_batch_size, self.max_delay_s, self.max_queue_size = max_batch_size, max_delay_s, max_queue_size
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")
        self._preparer: concurrent.futures.ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Pending[In, Out]] | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        # Items taken off the queue and not yet answered, by stage; stop() sees all three, so
        # nothing taken is lost.
        self._gathering: list[_Pending[In, Out]] = []  # taken, not yet prepared
        self._ahead: list[_Pending[In, Out]] = []  # the next batch (prepared), waiting for the model
        self._computing: list[_Pending[In, Out]] = []  # in the handler
        self._compute: asyncio.Future | None = None  # the handler call of ``_computing``

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model: queued, or prepared ahead (safe from another thread)."""
        return (self._queue.qsize() if self._queue is not None else 0) + len(self._ahead)

    def _held(self) -> list[_Pending[In, Out]]:
        return [*self._computing, *self._ahead, *self._gathering]

    async def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue(maxsize=self.max_queue_size)
            if self.prepare is not None:
                self._preparer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"prepare-{self.name}")
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
        leftovers = self._held()
        self._gathering, self._ahead, self._computing = [], [], []
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
            while not self._task.done() and (self._queue.qsize() or self._held()):
                await asyncio.sleep(0.005)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._fail_all(UnavailableError(f"model {self.name} is shutting down; retry"))
        if self._own_executor:
            self._executor.shutdown(wait=True)
        if self._preparer is not None:
            self._preparer.shutdown(wait=True)
        self._task = self._compute = self._preparer = None

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

    def _take_queued(self, room: int) -> None:
        while len(self._gathering) < room and not self._queue.empty():
            self._gathering.append(self._queue.get_nowait())

    async def _next_batch(self, room: int) -> None:
        """Gather up to ``room`` items into ``self._gathering`` by the wait policy (the model is idle)."""
        batch = self._gathering
        batch.append(await self._queue.get())
        if self.max_delay_s == 0:  # no waiting: the first item and what queued beside it
            return self._take_queued(room)
        end = time.monotonic() + self.max_delay_s
        while len(batch) < room:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return self._take_queued(room)
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return

    async def _arrivals(self, room: int) -> None:
        """Gather what arrives before the batch computing ends (the first item and what queued
        beside it, up to ``room``) into ``self._gathering``; nothing if the batch ends first."""
        if self._queue.empty():
            getter = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait({getter, self._compute}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended_first = not getter.done()
                if ended_first:
                    getter.cancel()  # Queue.get leaves the item queued when cancelled
            if ended_first:
                return
            self._gathering.append(getter.result())
        self._take_queued(room)

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

    @staticmethod
    def _run(stage: Callable[[list[In]], list], items: list[In]) -> list:
        with torch.inference_mode():
            return run_isolated(stage, items)

    def _call(self, items: list[In]) -> list[Out | Failure]:
        return self._run(self.handler, items)

    @staticmethod
    def _settle(batch: list[_Pending[In, Out]], outputs: list) -> list[tuple[_Pending[In, Out], Any]]:
        """Fail the items whose output is a Failure; returns the others not yet answered, each
        with its output (the caller keeps it as the prepared item, or sets it as the result)."""
        kept = []
        for pending, output in zip(batch, outputs):
            if pending.future.done():
                continue
            if isinstance(output, Failure):
                pending.future.set_exception(output.error)
            else:
                kept.append((pending, output))
        return kept

    async def _prepare_gathered(self) -> None:
        """Move the gathered items (the live ones, prepared when there is a stage) to ``_ahead``."""
        chunk = self._live(self._gathering)
        if self.prepare is not None and chunk:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._preparer, self._run, self.prepare, [p.item for p in chunk])
            for pending, prepared in self._settle(chunk, outputs):
                pending.item = prepared
            chunk = [p for p in chunk if not p.future.done()]
        self._ahead.extend(chunk)
        self._gathering = []

    def _busy(self) -> bool:
        return self._compute is not None and not self._compute.done()

    async def _gather(self) -> None:
        """Fill ``_ahead`` with the next batch: while a batch computes, what arrives before it
        ends (prepared as it comes, up to max_batch_size); when the model is idle, by the wait
        policy. Returns once the model is free and a batch is ready, or the batch is full."""
        while len(self._ahead) < self.max_batch_size:
            busy = self._busy()
            if self._ahead and not busy:
                return
            room = self.max_batch_size - len(self._ahead)
            await (self._arrivals(room) if busy else self._next_batch(room))
            await self._prepare_gathered()

    async def _model_free(self) -> None:
        """Wait for the batch computing (answered by ``_answer``); a crash of the call itself
        (not of the handler: run_isolated catches that) ends the collector."""
        if self._compute is not None:
            await self._compute

    def _launch(self, batch: list[_Pending[In, Out]]) -> None:
        self._computing, started = batch, time.perf_counter()
        loop = asyncio.get_running_loop()
        self._compute = loop.run_in_executor(self._executor, self._call, [p.item for p in batch])
        self._compute.add_done_callback(lambda done: self._answer(done, batch, started))

    def _answer(self, done: asyncio.Future, batch: list[_Pending[In, Out]], started: float) -> None:
        """Hand each caller of ``batch`` its output as soon as the handler returns (not when the
        collector next looks: it may be preparing the next batch)."""
        if done.cancelled() or done.exception() is not None:
            return  # stop() or the collector (awaiting it) deals with these
        for pending, output in self._settle(batch, done.result()):
            pending.future.set_result(output)
        if self._computing is batch:
            self._computing = []
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), time.perf_counter() - started)
            except Exception:  # noqa: BLE001 — a metrics hook must not stop the batcher
                log.exception("batcher %s: on_batch hook failed", self.name)

    async def _collect(self) -> None:
        while True:
            if self.prepare is None:
                await self._model_free()  # nothing to overlap: gather once the model is free
            await self._gather()
            await self._model_free()
            batch, self._ahead = self._live(self._ahead), []  # deadlines again, just before computing
            if batch:
                self._launch(batch)
