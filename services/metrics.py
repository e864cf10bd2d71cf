"""Prometheus metrics of one serving process, on its own registry, and the HTTP endpoint for them.

Series (every name starts with ``cvtasks_``):

- ``cvtasks_requests_total{model, method, status}``: finished RPCs and HTTP requests. ``method``
  is the full gRPC path (``/cvtasks.v1.DetectionService/Detect``) or the HTTP route (``POST
  /v1/models/{name}/detect``), ``status`` the gRPC status name (``OK``, ``INVALID_ARGUMENT``, ...)
  or the HTTP status code (``200``, ``413``), ``model`` the served model the request resolved (""
  when it resolved none: health checks, ListModels, an unknown model name). A stream RPC counts
  once. services/http.py opens an HTTP request's record as the interceptor does an RPC's.
- ``cvtasks_request_latency_seconds{model, stage}``: histogram per request item; ``stage`` is
  preprocess (decode), queue (waiting for a batch), inference (the batch's model call),
  postprocess (batch end -> response built) or total.
- ``cvtasks_batch_size{model}``: histogram of the batch sizes the model ran (warm-up excluded).
- ``cvtasks_queue_depth{model}``: gauge, requests waiting in the model's batcher queue, read at
  scrape time.
- ``cvtasks_gpu_memory_bytes{device, kind}``: gauge, ``kind`` = allocated | reserved (PyTorch's
  caching allocator), read at scrape time; present only once CUDA is in use in this process.

How the numbers get here without metrics code in the servicers: the error interceptor opens an
``RpcRecord`` per RPC (a context variable, so it follows the RPC's task and the stream items'
tasks), ``ModelHost.get`` notes the model on it, the timings helper in services/streaming.py
observes the stages, the interceptor counts the RPC with its status, and the host wires the
batcher's batch sizes and queue depths. The ``/metrics`` endpoint is services/metrics_http.py.

Several workers (``cvtasks serve --workers N``): each worker's ServingMetrics is ``shared``:
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before the
worker starts) writes every value to files there, and the supervisor's ``/metrics`` sums them
(``shared_registry``). The scrape-time gauges cannot be read across processes, so a shared
worker ``publish``-es them into 'livesum' gauges (summed over live workers) twice a second.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("cvtasks.metrics")

STAGES = ("preprocess", "queue", "inference", "postprocess", "total")
# Seconds: sub-millisecond queue waits on an idle GPU up to tens of seconds for big images on CPU.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Items per batch: powers of two cover every max_batch_size a single model is given in practice.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

QueueSource = Callable[[], Mapping[str, int]]


class ServingMetrics:
    """The metric objects of one serving process (or one test server), on a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, shared: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.shared = shared
        self.requests = Counter(
            "cvtasks_requests",
            "Finished RPCs by served model, gRPC method and gRPC status.",
            ["model", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cvtasks_request_latency_seconds",
            "Seconds per request item and stage (preprocess, queue, inference, postprocess, total).",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cvtasks_batch_size",
            "Items per batch the model ran (warm-up excluded).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._queue_sources: list[QueueSource] = []
        self._lock = threading.Lock()
        if not shared:
            self.registry.register(_ScrapeTimeCollector(self))
            return
        queue, gpu = _ScrapeTimeCollector._queue_family(), _ScrapeTimeCollector._gpu_family()
        self._queue_gauge = Gauge(
            queue.name, queue.documentation, ["model"], multiprocess_mode="livesum", registry=self.registry
        )
        self._gpu_gauge = Gauge(
            gpu.name, gpu.documentation, ["device", "kind"], multiprocess_mode="livesum", registry=self.registry
        )
        self._published: set[str] = set()

    def publish(self) -> None:
        """A shared worker: write the current queue depths and GPU memory to the shared gauges (a
        model no longer served reads 0)."""
        depths = self.queue_depths()
        for model in self._published - set(depths):
            self._queue_gauge.labels(model=model).set(0)
        for model, depth in depths.items():
            self._queue_gauge.labels(model=model).set(depth)
        self._published = set(depths)
        for (device, kind), value in gpu_memory().items():
            self._gpu_gauge.labels(device=device, kind=kind).set(value)

    def observe_rpc(self, *, model: str, method: str, status: str) -> None:
        self.requests.labels(model=model, method=method, status=status).inc()

    def observe_stages(self, model: str, seconds: Mapping[str, float]) -> None:
        """``seconds``: stage name (one of STAGES) -> duration in seconds."""
        for stage, value in seconds.items():
            self.latency.labels(model=model, stage=stage).observe(max(0.0, value))

    def observe_batch(self, model: str, size: int) -> None:
        self.batch_size.labels(model=model).observe(size)

    def watch_queues(self, source: QueueSource) -> None:
        """Read ``source()`` (model name -> queued requests) at every scrape."""
        with self._lock:
            self._queue_sources.append(source)

    def queue_depths(self) -> dict[str, int]:
        """Model name -> queued requests, over every watched source (a failing source is logged and skipped)."""
        with self._lock:
            sources = list(self._queue_sources)
        depths: dict[str, int] = {}
        for source in sources:
            try:
                depths.update(source())
            except Exception:  # noqa: BLE001 — a scrape must answer even if one source is broken
                log.exception("queue depth source failed")
        return depths

    def text(self) -> str:
        """The exposition text a scrape gets (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry).decode()


def shared_registry(path: str) -> CollectorRegistry:
    """A registry whose scrape sums the values every worker wrote under ``path`` (the supervisor's)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def gpu_memory() -> dict[tuple[str, str], int]:
    """(device, kind) -> bytes for each CUDA device, kind = allocated | reserved; {} unless CUDA is in use.

    Checks ``is_initialized`` first so that a scrape never creates a CUDA context in a CPU-only process.
    """
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    out = {}
    for index in range(torch.cuda.device_count()):
        out[(f"cuda:{index}", "allocated")] = int(torch.cuda.memory_allocated(index))
        out[(f"cuda:{index}", "reserved")] = int(torch.cuda.memory_reserved(index))
    return out


class _ScrapeTimeCollector(Collector):
    """Gauges read when scraped: queue depth per model and GPU memory per device."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return [self._queue_family(), self._gpu_family()]

    @staticmethod
    def _queue_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "cvtasks_queue_depth", "Requests waiting in the model's batcher queue.", labels=["model"]
        )

    @staticmethod
    def _gpu_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "cvtasks_gpu_memory_bytes",
            "CUDA memory held by PyTorch's caching allocator, bytes (allocated or reserved).",
            labels=["device", "kind"],
        )

    def collect(self) -> Iterator[Metric]:
        queues = self._queue_family()
        for model, depth in sorted(self.metrics.queue_depths().items()):
            queues.add_metric([model], depth)
        yield queues
        memory = gpu_memory()
        if memory:
            family = self._gpu_family()
            for (device, kind), value in sorted(memory.items()):
                family.add_metric([device, kind], value)
            yield family


# --------------------------------------------------------------------------- per-RPC record


@dataclass
class RpcRecord:
    """What one RPC learns about itself while it runs: which model served it."""

    metrics: ServingMetrics
    model: str = ""


_current: contextvars.ContextVar[RpcRecord | None] = contextvars.ContextVar("cvtasks_rpc", default=None)


def begin_rpc(metrics: ServingMetrics | None) -> RpcRecord | None:
    """Open this RPC's record (None without metrics). grpc.aio runs each RPC in its own task, so the
    value set here lives exactly as long as the RPC; tasks the RPC spawns (stream items) inherit it."""
    if metrics is None:
        return None
    record = RpcRecord(metrics)
    _current.set(record)
    return record


def current_rpc() -> RpcRecord | None:
    return _current.get()


def note_model(name: str) -> None:
    """Tell the current RPC (if any) which model serves it; called by ModelHost.get."""
    record = _current.get()
    if record is not None:
        record.model = name


def observe_stages(model: str, seconds: Mapping[str, float]) -> None:
    """Record one request item's stage durations (seconds) on the current RPC's metrics, if any."""
    record = _current.get()
    if record is not None:
        record.metrics.observe_stages(model, seconds)
