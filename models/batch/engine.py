"""The local pipelined engine: listing, decoding, inference and writing overlap.

    feeder thread ──(slot)──> decode pool (N threads) ──> main thread: batches on the device
                                                            └──> writer thread: files + manifest

A slot is taken before an input is read and given back once its manifest line is written, so
at most ``max_in_flight`` images are held in memory whatever the folder's size. OpenCV and torch
release the GIL, so decoding, inference and PNG/JPEG encoding run in parallel.
"""

from __future__ import annotations

import operator
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from models.batch.job import BatchJob
from models.batch.store import ERRORS_FILE, InputFile, Manifest, write_jsonl
from models.errors import CvtasksError
from models.isolation import Failure, run_isolated

T = TypeVar("T")
Loaded = tuple["np.ndarray | None", Any]  # (decoded pixels or None, the model's input)
Ready = tuple["np.ndarray | None", Any, "tuple[int, int] | None"]  # (pixels kept, model input, (h, w))


@dataclass(frozen=True)
class Work:
    """One input of a job: its manifest key and how to load it (run in the decode pool)."""

    key: str
    load: Callable[[], Loaded]


@dataclass
class Summary:
    """What a run did; ``outputs`` are the results files it (re)wrote."""

    out: Path
    total: int = 0
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return (self.processed + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "total": self.total,
            "processed": self.processed,
            "skipped": self.skipped,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "outputs": [str(p) for p in self.outputs],
        }

    def text(self) -> str:
        lines = [
            f"{self.processed} processed, {self.skipped} skipped (already done), {self.failed} failed "
            f"of {self.total} in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s)",
            f"results in {self.out}: " + ", ".join(p.name for p in self.outputs),
        ]
        if self.failed:
            lines.append(f"failed inputs and why: {self.out / ERRORS_FILE}")
        return "\n".join(lines)


def file_work(task: BatchJob, inputs: Iterable[InputFile]) -> list[Work]:
    """Image files as work: read the bytes and ``task.prepare`` them."""
    return [Work(f.key, lambda path=f.path: task.prepare(path.read_bytes())) for f in inputs]


def index_work(task: BatchJob, count: int) -> list[Work]:
    """Inputs 0..count-1 of a job that reads no files (generation: the seed's latents) as work."""
    return [Work(task.key(i), lambda x=x: (None, x)) for i, x in enumerate(task.inputs(count))]


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, CvtasksError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"could not read the file: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class Sink:
    """Writes results on one thread: each input's files and row (``task.record``), then its
    manifest line; counts and advances the progress bar. ``done`` runs once per input written."""

    def __init__(
        self, task: BatchJob, manifest: Manifest, summary: Summary, bar: tqdm, done: Callable[[], None] = lambda: None
    ) -> None:
        self.task, self.manifest, self.summary, self.bar, self.done = task, manifest, summary, bar, done
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-writer")
        self._futures: list[Future] = []

    def ok(self, items: Sequence[tuple[str, Any, tuple[int, int], np.ndarray | None]]) -> None:
        """(key, output, (height, width), pixels or None) per input, written in the background."""
        self._submit(self._write_ok, list(items))

    def failed(self, key: str, reason: str) -> None:
        self._submit(self._write_failed, key, reason)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        for f in self._futures:
            if f.done():
                f.result()  # a write failed (e.g. disk full): stop the job and say why
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(self._pool.submit(fn, *args))

    def _write_ok(self, items: list[tuple[str, Any, tuple[int, int], np.ndarray | None]]) -> None:
        records = [
            {"key": key, "status": "ok", "row": self.task.record(key, output, size, array)}
            for key, output, size, array in items
        ]
        self.manifest.append(records)
        self.summary.processed += len(records)
        self._advance(len(records))

    def _write_failed(self, key: str, reason: str) -> None:
        self.manifest.append([{"key": key, "status": "failed", "error": reason}])
        self.summary.failed += 1
        self.bar.set_postfix(failed=self.summary.failed)
        self._advance(1)

    def _advance(self, count: int) -> None:
        self.bar.update(count)
        for _ in range(count):
            self.done()

    def close(self) -> None:
        """Wait for every pending write; raises the first write error."""
        self._pool.shutdown(wait=True)
        for f in self._futures:
            f.result()


def finish(task: BatchJob, manifest: Manifest, summary: Summary, started: float) -> Summary:
    """Rebuild the results files and the errors file from the manifest; close it."""
    summary.outputs = [*task.finish(manifest.rows()), write_jsonl(manifest.out / ERRORS_FILE, manifest.errors())]
    summary.seconds = time.perf_counter() - started
    manifest.close()
    return summary


def plan(
    items: Sequence[T], manifest: Manifest, summary: Summary, *, key: Callable[[T], str] = operator.attrgetter("key")
) -> list[T]:
    """The items (Work, InputFile, or anything ``key`` names) not finished by an earlier run
    (failed ones are tried again); counts the total and the skipped in ``summary``."""
    todo = [item for item in items if not manifest.finished(key(item))]
    summary.total, summary.skipped = len(items), len(items) - len(todo)
    return todo


def progress_bar(total: int, *, enabled: bool, desc: str) -> tqdm:
    """Images/s and ETA on a terminal; silent when not a terminal or not ``enabled``."""
    return tqdm(total=total, unit="img", desc=desc, disable=None if enabled else True, dynamic_ncols=True)


def run_local(
    task: BatchJob,
    model: nn.Module,
    work: Sequence[Work],
    manifest: Manifest,
    *,
    batch_size: int = 8,
    decode_workers: int = 2,
    max_in_flight: int | None = None,
    progress: bool = True,
) -> Summary:
    """Run every unfinished input of ``work`` through ``task`` on ``model``; returns the summary."""
    in_flight = max_in_flight or 4 * batch_size
    if batch_size < 1 or decode_workers < 1 or in_flight < batch_size:
        raise ValueError(
            f"need batch_size >= 1, decode_workers >= 1 and max_in_flight >= batch_size, got "
            f"{batch_size}, {decode_workers}, {in_flight}"
        )
    started = time.perf_counter()
    summary = Summary(manifest.out)
    todo = plan(work, manifest, summary)
    slots = threading.BoundedSemaphore(in_flight)
    with progress_bar(len(todo), enabled=progress, desc=task.name) as bar:
        sink = Sink(task, manifest, summary, bar, done=slots.release)
        try:
            _pipeline(task, model, todo, sink, slots, batch_size=batch_size, decode_workers=decode_workers)
        finally:
            sink.close()
    return finish(task, manifest, summary, started)


def _pipeline(
    task: BatchJob,
    model: nn.Module,
    todo: Sequence[Work],
    sink: Sink,
    slots: threading.Semaphore,
    *,
    batch_size: int,
    decode_workers: int,
) -> None:
    loads: queue.Queue[tuple[Work, Future] | None] = queue.Queue()
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="batch-decode")

    def feed() -> None:
        try:
            for item in todo:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                loads.put((item, pool.submit(item.load)))
        finally:
            loads.put(None)

    feeder = threading.Thread(target=feed, name="batch-feeder", daemon=True)
    feeder.start()
    batch: list[tuple[str, Ready]] = []
    try:
        while (entry := loads.get()) is not None:
            item, future = entry
            try:
                pixels, inputs = future.result()
                batch.append((item.key, (_kept(task, pixels), inputs, _size(pixels, None))))
            except Exception as exc:  # noqa: BLE001 — a bad input is recorded, the job goes on
                sink.failed(item.key, failure_reason(exc))
            if len(batch) >= batch_size:
                _infer(task, model, batch, sink)
                batch = []
        if batch:
            _infer(task, model, batch, sink)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        feeder.join()


def _infer(task: BatchJob, model: nn.Module, batch: list[tuple[str, Ready]], sink: Sink) -> None:
    """One batch on the device; when it fails, each input alone, so one bad input fails alone."""
    outputs = run_isolated(lambda inputs: task.infer(model, inputs), [inputs for _, (_, inputs, _) in batch])
    done = []
    for (key, (pixels, _, size)), out in zip(batch, outputs):
        if isinstance(out, Failure):
            sink.failed(key, f"inference failed: {failure_reason(out.error)}")
        else:
            done.append((key, out, size or _size(None, out), pixels))
    if done:
        sink.ok(done)


def _kept(task: BatchJob, pixels: np.ndarray | None) -> np.ndarray | None:
    """The decoded pixels stay in memory until written only when the task draws on them."""
    return pixels if task.needs_pixels else None


def _size(pixels: np.ndarray | None, output: Any) -> tuple[int, int] | None:
    """(height, width) of the input, else of the output (generation); None when neither has one."""
    shape = pixels.shape if pixels is not None else None if output is None else np.asarray(output).shape
    return None if shape is None else (int(shape[0]), int(shape[1]))
