"""Remote mode of ``cvtasks batch``: a running service does the inference.

Images go over the task's streaming RPC with at most ``in_flight`` unanswered; each answer is
written by the same ``Sink`` as the local engine (task.record, then the manifest line). When
the server goes away mid-run (restart, deploy), the unanswered inputs are sent again on a new
stream once it is back, for up to ``retry_s`` seconds without progress: a restart is not fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import torch

from models.batch.engine import Sink, Summary, failure_reason, finish, plan, progress_bar
from models.batch.job import BatchJob
from models.batch.store import InputFile, Manifest
from models.checkpoints import IDENTITY, ModelConfig
from models.options import MAX_IMAGES
from models.preprocessing import decode_image
from services.client import CvtasksClient
from services.proto_options import proto_option_names
from services.tasks import SERVICES
from services.typed import TypedService

log = logging.getLogger("cvtasks.batch")

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
_RETRYABLE_ITEM_CODES = {code.value[0] for code in RETRYABLE}


class ServerBusy(Exception):
    """An item came back UNAVAILABLE / RESOURCE_EXHAUSTED (the server is stopping or full): the
    input is not at fault, so it is sent again rather than recorded as failed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{_CODE_NAMES.get(code, code)}: {message}")


def remote_config(client: CvtasksClient, task: str, model: str) -> ModelConfig:
    """The served model's config as far as a batch job needs it (name, version, classes)."""
    info = client.get_model(model)
    if info.task != task:
        raise ValueError(f"model `{info.name}` on {client.target} is a {info.task} model, not {task}")
    model_args: dict[str, Any] = {}
    if task == "generation":  # the latent prior and channels, so latents are drawn here as there
        probe = client.generate(count=1, fmt="raw", model=info.name)
        model_args = {"nz": probe.latent_size, "channels": probe.images[0].raw.channels}
        if probe.latent_components:
            model_args.update(latent_components=probe.latent_components, latent_spread=probe.latent_spread)
    named = {key: getattr(info, key) for key in IDENTITY}
    return ModelConfig(**named, classes=tuple(info.classes), input_size=info.input_size or None, model_args=model_args)


def run_remote(
    task: BatchJob,
    client: CvtasksClient,
    inputs: Sequence[InputFile],
    manifest: Manifest,
    *,
    in_flight: int = 32,
    retry_s: float = 60.0,
    progress: bool = True,
) -> Summary:
    """Every unfinished input through the service's stream; returns the summary."""
    if not task.task.takes_images:
        raise ValueError(f"remote mode runs image tasks; for {task.name} use run_remote_generate")
    started, summary = time.perf_counter(), Summary(manifest.out)
    pending = deque(plan(inputs, manifest, summary))
    with progress_bar(len(pending), enabled=progress, desc=f"{task.name} @ {client.target}") as bar:
        sink = Sink(task, manifest, summary, bar)
        try:
            _with_retries(lambda: _stream_once(task, client, pending, sink, in_flight), lambda: len(pending), retry_s)
        finally:
            sink.close()
    return finish(task, manifest, summary, started)


def _with_retries(attempt: Callable[[], None], remaining: Callable[[], int], retry_s: float) -> None:
    """Run ``attempt`` until nothing remains; a retryable gRPC error waits and tries again, unless
    no input has been answered for ``retry_s`` seconds."""
    last_progress, left, delay = time.monotonic(), remaining(), 0.25
    while True:
        try:
            attempt()
            return
        except (grpc.RpcError, ServerBusy) as exc:
            if isinstance(exc, grpc.RpcError) and exc.code() not in RETRYABLE:
                raise
            if remaining() < left:
                last_progress, left, delay = time.monotonic(), remaining(), 0.25
            if time.monotonic() - last_progress > retry_s:
                raise
            reason = exc.code().name if isinstance(exc, grpc.RpcError) else str(exc)
            log.warning("server unavailable (%s); retrying %d unanswered inputs in %.1f s", reason, remaining(), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _stream_once(task: BatchJob, client: CvtasksClient, pending: deque[InputFile], sink: Sink, in_flight: int) -> None:
    """One stream over what is pending; on a transport error the unanswered inputs go back to the
    front of ``pending`` (in order) and the error propagates."""
    remote, lock, slots = SERVICES.get(task.name).typed, threading.Lock(), threading.Semaphore(in_flight)
    sent: deque[InputFile] = deque()
    stop = threading.Event()

    def requests() -> Iterator[bytes]:
        while not stop.is_set():
            slots.acquire()
            with lock:
                if stop.is_set() or not pending:
                    return
                item = pending.popleft()
                try:
                    data = item.path.read_bytes()
                except OSError as exc:
                    sink.failed(item.key, failure_reason(exc))
                    slots.release()
                    continue
                sent.append(item)
            yield data

    carried = proto_option_names(remote.options_message)
    options = {k: v for k, v in task.given.items() if k in carried}
    call = getattr(client, remote.client_stream)(requests(), **options)
    try:
        for response in call:
            with lock:
                item = sent.popleft()
                if response.HasField("error") and response.error.code in _RETRYABLE_ITEM_CODES:
                    sent.appendleft(item)
                    raise ServerBusy(response.error.code, response.error.message)
            slots.release()
            _answer(task, remote, item, response, sink)
    except BaseException:
        stop.set()
        slots.release()
        call.cancel()
        with lock:
            pending.extendleft(reversed(sent))
            sent.clear()
        raise


def _answer(task: BatchJob, remote: type[TypedService], item: InputFile, response: Any, sink: Sink) -> None:
    if response.HasField("error"):
        sink.failed(item.key, f"{_CODE_NAMES.get(response.error.code, 'ERROR')}: {response.error.message}")
        return
    pixels: np.ndarray | None = None
    if task.needs_pixels:
        pixels = decode_image(item.path.read_bytes())
    sink.ok([(item.key, remote.output_of(response), (response.image_height, response.image_width), pixels)])


def _pixels(raw: Any) -> np.ndarray:
    return np.frombuffer(raw.data, np.uint8).reshape(raw.height, raw.width, raw.channels)


def run_remote_generate(
    task: BatchJob,
    client: CvtasksClient,
    count: int,
    manifest: Manifest,
    *,
    retry_s: float = 60.0,
    progress: bool = True,
) -> Summary:
    """Images 0..count-1 of the task's seed from the service: the latents are drawn here (the same
    as the service's for that seed) and sent explicitly, 64 per Generate call."""
    started, summary = time.perf_counter(), Summary(manifest.out)
    z = torch.cat(task.inputs(count))
    indices = deque(plan(range(count), manifest, summary, key=task.key))
    with progress_bar(len(indices), enabled=progress, desc=f"generate @ {client.target}") as bar:
        sink = Sink(task, manifest, summary, bar)

        def attempt() -> None:
            while indices:
                chunk = [indices[i] for i in range(min(MAX_IMAGES, len(indices)))]
                response = client.generate(latents=z[chunk].tolist(), fmt="raw", model=task.config.name)
                images = [_pixels(image.raw) for image in response.images]
                sink.ok([(task.key(i), image, image.shape[:2], None) for i, image in zip(chunk, images)])
                for _ in chunk:
                    indices.popleft()

        try:
            _with_retries(attempt, lambda: len(indices), retry_s)
        finally:
            sink.close()
    return finish(task, manifest, summary, started)
