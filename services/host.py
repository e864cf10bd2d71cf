"""Loaded models of one task, each behind its own dynamic batcher.

A task plugs in with its task object (models/task.py: how to run a batch, what a warm-up input
is); the
host does the rest for every task alike: load from the model store, pick the device, warm up,
route by name (empty name -> the default model), report model info.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import checkpoints
from models.checkpoints import IDENTITY
from models.devices import pick_device
from models.errors import ModelStoreError, UnknownModelError, shown
from models.options import Options
from models.preprocessing import DEFAULT_MAX_PIXELS
from models.runtimes import RuntimeChoice, Served, check_device, choice_for, serve_with
from models.task import Copied, InputMover, Task
from services.batching import DynamicBatcher
from services.errors import QueueFullError, UnavailableError
from services.imaging import check_gpu_decode_mode
from services.metrics import ServingMetrics

log = logging.getLogger("cvtasks.host")


@dataclass(frozen=True)
class ServingConfig:
    """Limits and batching of every model a host serves."""

    max_batch_size: int = 8
    max_delay_ms: float = 0.0  # 0: an idle model runs a request at once; a busy one batches what queued
    max_queue_size: int = 64
    # Overlapped batches on CUDA: while a batch computes, the next one is taken and its inputs
    # pinned and copied to the device on a stream of their own, so the model starts it at once.
    # (On the CPU there is nothing to copy, so no stage.)
    overlap: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str | None = None  # None: CUDA when available, else CPU
    devices: tuple[str, ...] = ()  # one replica of each model per device, e.g. ("cuda:0", "cuda:1")
    decode_workers: int = 2
    # JPEGs decoded in batches on the serving device (services/imaging.py): "auto" (when it is
    # CUDA: nvJPEG), "on" (on the CPU too: for tests), "off" (every image in the thread pool).
    gpu_decode: str = "auto"
    # Decoded pixels a model may hold at once, summed over the requests it has admitted (decoding,
    # queued, computing, encoding): the memory ceiling of its images, about 30 bytes a pixel
    # (decoded RGB, the float input, outputs). A request beyond it is refused before decoding.
    max_inflight_pixels: int = 2 * DEFAULT_MAX_PIXELS
    # A unary call without a deadline gets the default; a longer one is cut to the maximum, so no
    # request can hold a queue slot for ever. Streams keep the client's (batch jobs run for hours).
    default_deadline_s: float = 60.0
    max_deadline_s: float = 600.0
    # How models run (models/runtimes.py); a model's config.json ``extra.serving`` overrides both.
    runtime: str = "eager"  # eager, compiled (torch.compile) or onnxruntime
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast)
    export_cache: str = ""  # where onnxruntime's exports of models without one are made ("": the temp dir)

    def __post_init__(self) -> None:
        RuntimeChoice(self.runtime, self.precision)  # an unknown name fails here, listing the known ones
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.decode_workers < 1:
            raise ValueError("max_batch_size, max_queue_size and decode_workers must be >= 1")
        if self.max_delay_ms < 0 or self.max_pixels < 1:
            raise ValueError("max_delay_ms must be >= 0 and max_pixels >= 1")
        if self.max_inflight_pixels < self.max_pixels:
            raise ValueError(
                f"max_inflight_pixels ({self.max_inflight_pixels}) must be >= max_pixels "
                f"({self.max_pixels}), or the largest accepted image could never be served"
            )
        check_gpu_decode_mode(self.gpu_decode)
        if self.devices and self.device:
            raise ValueError("give either device or devices, not both")
        object.__setattr__(self, "devices", tuple(self.devices))
        if not 0 < self.default_deadline_s <= self.max_deadline_s:
            raise ValueError(
                f"need 0 < default_deadline_s <= max_deadline_s, got {self.default_deadline_s}, {self.max_deadline_s}"
            )


@dataclass(frozen=True)
class Item:
    """What one request puts in a model's batcher: a model input (on the CPU) and its options."""

    input: Any
    options: Options
    copied: Copied | None = None  # set when the batcher's prepare stage copied ``input`` to a GPU


class Admission:
    """What one model has taken on and not yet answered: requests admitted (decoding, queued,
    computing or encoding their response) and their decoded pixels. A request beyond either bound
    is refused at once, before its image is decoded, so a flood costs no decoding and memory has a
    ceiling. Used on the event loop only (no lock)."""

    def __init__(self, name: str, *, max_requests: int, max_pixels: int) -> None:
        self.name, self.max_requests, self.max_pixels = name, max_requests, max_pixels
        self.requests = self.pixels = 0

    @contextlib.contextmanager
    def admit(self, pixels: int) -> Iterator[None]:
        """Hold a place for one request of ``pixels`` decoded pixels for the block; QueueFullError
        when the model is at either bound (a single image larger than the pixel bound is still
        admitted when nothing else is held, so every image the decoder accepts can be served)."""
        if self.requests >= self.max_requests or (self.requests and self.pixels + pixels > self.max_pixels):
            raise QueueFullError(
                f"model {self.name} is at capacity ({self.requests} requests, {self.pixels / 1e6:.1f} Mpx in "
                f"flight; bounds {self.max_requests} requests, {self.max_pixels / 1e6:.0f} Mpx); retry later"
            )
        self.requests += 1
        self.pixels += pixels
        try:
            yield
        finally:
            self.requests -= 1
            self.pixels -= pixels


@dataclass(frozen=True)
class LoadedModelInfo:
    """What ModelService reports of one loaded model (the ModelInfo proto, transport-free)."""

    name: str
    task: str
    architecture: str
    classes: list[str]
    version: str
    device: str
    ready: bool
    input_size: int = 0
    created: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    is_default: bool = False
    runtime: str = "eager"
    precision: str = "fp32"


@dataclass(frozen=True)
class BatchResult:
    """A batch item's output plus when its batch started and ended (time.perf_counter seconds)
    and the name of the model that ran it."""

    value: Any
    started: float
    finished: float
    model: str = ""


class Replica:
    """One copy of a model on one device, behind its own batcher."""

    def __init__(self, owner: LoadedModel, model: nn.Module, device: torch.device, serving: ServingConfig) -> None:
        self.owner, self.model, self.device = owner, model, device
        self.batches_run = 0
        self.mover = InputMover(device)
        self.batcher: DynamicBatcher[Any, BatchResult] = DynamicBatcher(
            self._run,
            max_batch_size=serving.max_batch_size,
            max_delay_s=serving.max_delay_ms / 1000,
            max_queue_size=serving.max_queue_size,
            name=owner.config.name,
            # On the CPU there is nothing to move: the stage would only add a thread hop (measured
            # on the 2-core CPU: no gain; benchmarks/results/segmentation_overlap_cpu_stage.json).
            prepare=self._prepare if serving.overlap and self.mover.copies else None,
            on_batch=owner.batch_done,
        )

    def _prepare(self, items: list[Item]) -> list[Item]:
        """The batcher's prepare stage: the items' inputs moved to the replica's device."""
        inputs, copied = self.mover.move([i.input for i in items])
        return [dataclasses.replace(item, input=x, copied=copied) for item, x in zip(items, inputs)]

    def _run(self, items: list[Item]) -> list[BatchResult]:
        config = self.owner.config
        for copied in {id(i.copied): i.copied for i in items}.values():
            self.mover.ready(copied)
        started = time.perf_counter()
        values = self.owner.task.run_batch(self.model, config, [i.input for i in items], [i.options for i in items])
        finished = time.perf_counter()
        self.batches_run += 1
        return [BatchResult(v, started, finished, config.name) for v in values]


class LoadedModel:
    """A model on one or more devices (a Replica each, with its batcher). ``submit`` returns a
    BatchResult from the replica with the shortest queue."""

    def __init__(
        self,
        models: Sequence[tuple[nn.Module, torch.device]],
        config: checkpoints.ModelConfig,
        task: Task,
        serving: ServingConfig,
        *,
        metrics: ServingMetrics | None = None,
        served: Served = Served("eager", "fp32"),
    ) -> None:
        if not models:
            raise ValueError("a loaded model needs at least one device")
        self.config, self.task, self.metrics, self.served = config, task, metrics, served
        self.ready = False
        self.successor: LoadedModel | None = None  # set when a reload swaps a newer version in
        self.replicas = [Replica(self, model, device, serving) for model, device in models]
        self.device = self.replicas[0].device
        # What can wait in the queues plus what can compute at once.
        self.admission = Admission(
            config.name,
            max_requests=len(models) * (serving.max_queue_size + serving.max_batch_size),
            max_pixels=serving.max_inflight_pixels,
        )
        self._turn = 0

    def batch_done(self, size: int, seconds: float) -> None:
        if self.metrics is not None and self.ready:  # the warm-up batch is not traffic
            self.metrics.observe_batch(self.config.name, size)

    @property
    def queue_depth(self) -> int:
        return sum(r.batcher.queue_depth for r in self.replicas)

    async def start(self) -> None:
        """Start every replica's batcher and warm each up with the task's warm-up item."""
        for replica in self.replicas:
            await replica.batcher.start()
            warmup = Item(self.task.warmup_input(self.config), self.task.options(self.config, {}))
            await replica.batcher.submit(warmup)
        self.ready = True

    async def stop(self, *, drain: bool = True) -> None:
        for replica in self.replicas:
            await replica.batcher.stop(drain=drain)

    def _pick(self) -> Replica:
        """The replica with the fewest queued requests; ties go round-robin."""
        self._turn += 1
        count = len(self.replicas)
        order = [self.replicas[(self._turn + i) % count] for i in range(count)]
        return min(order, key=lambda r: r.batcher.queue_depth)

    async def submit(self, item: Any, *, deadline: float | None = None) -> BatchResult:
        """Queue ``item`` on a replica's batcher; once a newer version has replaced this one, on
        the newer one (a request that picked this model just before the swap does not fail)."""
        if self.successor is not None:
            return await self.successor.submit(item, deadline=deadline)
        return await self._pick().batcher.submit(item, deadline=deadline)

    def info(self, *, is_default: bool = False) -> LoadedModelInfo:
        c, device = self.config, ",".join(str(r.device) for r in self.replicas)
        named = {key: getattr(c, key) for key in IDENTITY}
        stored = {"classes": list(c.classes), "input_size": c.input_size or 0, "created": c.created}
        return LoadedModelInfo(
            **named,
            **stored,
            metrics=dict(c.metrics),
            device=device,
            ready=self.ready,
            is_default=is_default,
            runtime=self.served.runtime,
            precision=self.served.precision,
        )


async def _warm_up(loaded: LoadedModel, folder: Path) -> None:
    """Start ``loaded`` (its warm-up batch runs); a model that fails it is stopped again and the
    failure is a ModelStoreError: the folder loaded, but what it holds cannot serve."""
    try:
        await loaded.start()
    except Exception as exc:  # noqa: BLE001 — whatever the model raised on the warm-up input
        fault = f"{type(exc).__name__}: {str(exc)[:300]}"
    else:
        return
    await loaded.stop(drain=False)
    raise ModelStoreError(
        f"{folder.name}/{checkpoints.CONFIG_FILE}: the model loads but fails its warm-up run "
        f"({fault}); fix the file or retrain the model"
    )


def serving_devices(serving: ServingConfig) -> list[torch.device]:
    """``serving.devices`` (one replica each; a CUDA device this machine lacks falls back to the
    CPU, once, with a warning), else the one ``serving.device`` (None: CUDA when available)."""
    if not serving.devices:
        return [pick_device(serving.device)]
    found: list[torch.device] = []
    for name in serving.devices:
        device = torch.device(name)
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            log.warning("device %s is not available here; falling back to the CPU", name)
            device = torch.device("cpu")
            if device in found:
                continue
        found.append(device)
    return found


class ModelHost:
    """Every model of one task found in a model store (or the names given), ready to serve."""

    def __init__(
        self,
        store: str | Path,
        task: Task,
        serving: ServingConfig = ServingConfig(),
        *,
        names: Sequence[str] = (),
        default: str | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.store, self.task, self.serving, self.metrics = Path(store), task, serving, metrics
        self._names, self._default = list(names), default
        self._models: dict[str, LoadedModel] = {}
        self.devices = serving_devices(serving)
        self.runtime = RuntimeChoice(serving.runtime, serving.precision)
        for device in self.devices:
            check_device(self.runtime, device)  # e.g. --precision fp16 on the CPU: refused at start
        self.export_cache = Path(serving.export_cache or Path(tempfile.gettempdir()) / "cvtasks-exports")
        if metrics is not None:
            metrics.watch_queues(self.queue_depths)

    async def load_all(self) -> None:
        """Load and warm up every requested model, or else every model of this task in the store:
        a broken folder among those is logged and skipped (a named one fails the start)."""
        names = self._names or [c.name for c in checkpoints.list_store(self.store) if c.task == self.task.name]
        if not names:
            raise UnknownModelError(
                f"no {self.task.name} models in model store {self.store}; train one first "
                f"(cvtasks train {self.task.name} ...)"
            )
        for name in names:
            try:
                await self.load(name)
            except ModelStoreError as exc:
                if self._names:
                    raise
                log.warning("skipping broken model folder `%s` of model store %s: %s", name, self.store, exc)
        if not self._models:
            raise UnknownModelError(
                f"no {self.task.name} model in model store {self.store} could be loaded (the log "
                "says why); fix or retrain them"
            )
        if self._default is None:
            self._default = next(iter(self._models))
        self.get(self._default)  # a wrong --default-model fails here, listing what is loaded

    async def prepare(self, name: str) -> LoadedModel:
        """Load ``name`` from the store and warm it up, without serving it yet (``install`` swaps it
        in, ``discard`` drops it): the part of a load that can fail, kept apart so that several
        worker processes can load first and swap in only once every one has succeeded."""
        folder = checkpoints.resolve(self.store, name)
        config = checkpoints.load_config(folder)
        if config.task != self.task.name:
            raise UnknownModelError(f"model `{name}` is a {config.task} model, not {self.task.name}")
        prepared = [await asyncio.to_thread(self._load_on, folder, device) for device in self.devices]
        models = [(model, device) for (model, _), device in zip(prepared, self.devices)]
        loaded = LoadedModel(models, config, self.task, self.serving, metrics=self.metrics, served=prepared[0][1])
        await _warm_up(loaded, folder)
        return loaded

    async def install(self, loaded: LoadedModel) -> None:
        """Serve a prepared model under its name, replacing an older version (whose queued
        requests finish on it)."""
        name = loaded.config.name
        old = self._models.get(name)
        self._models[name] = loaded
        log.info(
            "model loaded",
            extra={"model": name, "version": loaded.config.version, "device": ",".join(str(d) for d in self.devices)},
        )
        if old is not None:
            old.successor = loaded
            await old.stop(drain=True)  # what it had queued finishes on the old version

    @staticmethod
    async def discard(loaded: LoadedModel) -> None:
        """Drop a prepared model that will not be installed."""
        await loaded.stop(drain=False)

    async def load(self, name: str) -> LoadedModel:
        """Load ``name`` from the store, warm it up, then swap it in (replacing an older version)."""
        loaded = await self.prepare(name)
        await self.install(loaded)
        return loaded

    def _load_on(self, folder: Path, device: torch.device) -> tuple[nn.Module, Served]:
        """The model in ``folder`` on ``device``, set up for its runtime; ModelStoreError when the
        runtime asked for (here or by its config.json) cannot serve it."""
        model, config = checkpoints.load_model(folder, device=device)
        try:
            choice = choice_for(config, self.runtime)
        except ValueError as exc:
            raise ModelStoreError(f"{folder.name}/{checkpoints.CONFIG_FILE}: {exc}") from None
        try:
            return model, serve_with(model, config, folder, device, choice, cache=self.export_cache)
        except Exception as exc:  # noqa: BLE001 — whatever the runtime raised: the model cannot serve so
            fault = f"{type(exc).__name__}: {str(exc)[:500]}" if not isinstance(exc, ValueError) else str(exc)
        raise ModelStoreError(
            f"model `{config.name}` cannot serve with runtime {choice.runtime} at {choice.precision} "
            f"on {device}: {fault}"
        )

    async def unload(self, name: str) -> str:
        """Stop serving ``name`` (its queued requests finish first); returns the task's default
        model afterwards ("" when none is left)."""
        loaded = self.get(name)  # UnknownModelError lists what is served
        del self._models[loaded.config.name]
        if self._default == loaded.config.name:
            self._default = next(iter(self._models), None)
        await loaded.stop(drain=True)
        log.info("model unloaded", extra={"model": loaded.config.name})
        return self._default or ""

    def set_default(self, name: str) -> None:
        self._default = self.get(name).config.name

    @property
    def default_model(self) -> str:
        """The model a request that names none gets ("" when none is loaded)."""
        return self._default or ""

    def get(self, name: str = "") -> LoadedModel:
        """The model called ``name`` ("" -> the default); UnknownModelError lists what is served."""
        key = name or self._default or ""
        loaded = self._models.get(key)
        if loaded is None:
            if not self._models:
                raise UnavailableError(f"no {self.task.name} model is loaded yet; retry shortly")
            raise UnknownModelError(f"Unknown model `{shown(key)}`. This server serves: {sorted(self._models)}")
        return loaded

    def queue_depths(self) -> dict[str, int]:
        """Model name -> requests waiting in its batcher queue (safe to call from another thread)."""
        return {name: loaded.queue_depth for name, loaded in list(self._models.items())}

    def list_models(self) -> list[LoadedModelInfo]:
        return [m.info(is_default=name == self._default) for name, m in self._models.items()]

    async def close(self) -> None:
        for loaded in self._models.values():
            await loaded.stop(drain=True)
        self._models.clear()
