"""Assemble a serving process: per-task model hosts + servicers + ModelService.

A new task plugs in with one ``TASKS`` entry: its TaskRuntime and its servicer class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from models.registry import Registry
from services.host import ModelHost, ServingConfig, TaskRuntime
from services.imaging import Decoder
from services.metrics import ServingMetrics
from services.metrics_http import start_metrics_endpoint
from services.models import ModelServicer
from services.server import ServerConfig, Servicer, serve


@dataclass(frozen=True)
class TaskService:
    runtime: Callable[[], TaskRuntime]
    servicer: Callable[[ModelHost, Decoder], Servicer]


def _detection() -> TaskService:
    from services.detection import DetectionRuntime, DetectionServicer

    return TaskService(DetectionRuntime, DetectionServicer)


def _segmentation() -> TaskService:
    from services.segmentation import SegmentationRuntime, SegmentationServicer

    return TaskService(SegmentationRuntime, SegmentationServicer)


def _captioning() -> TaskService:
    from services.captioning import CaptioningRuntime, CaptioningServicer

    return TaskService(CaptioningRuntime, CaptioningServicer)


def _generation() -> TaskService:
    from services.generation import GenerationRuntime, GenerationServicer

    return TaskService(GenerationRuntime, GenerationServicer)


def _kserve(hosts: Sequence[ModelHost], decoder: Decoder) -> Servicer:
    """KServe v2 / Open Inference Protocol (``inference.GRPCInferenceService``) over every host."""
    from services.kserve import KServeServicer

    return KServeServicer(hosts, decoder)


TASKS: Registry[Callable[[], TaskService]] = Registry("served task")
TASKS.register("detection")(_detection)
TASKS.register("segmentation")(_segmentation)
TASKS.register("captioning")(_captioning)
TASKS.register("generation")(_generation)


@dataclass
class App:
    """Servicers plus the hooks serve() runs around them, and the process's metrics."""

    servicers: list[Servicer]
    hosts: list[ModelHost]
    decoder: Decoder
    metrics: ServingMetrics = field(default_factory=ServingMetrics)

    async def startup(self) -> None:
        for host in self.hosts:
            await host.load_all()

    async def shutdown(self) -> None:
        await asyncio.gather(*(host.close() for host in self.hosts))
        self.decoder.close()


def build_app(
    tasks: Sequence[str],
    model_store: str | Path,
    serving: ServingConfig = ServingConfig(),
    *,
    models: Sequence[str] = (),
    default_model: str | None = None,
) -> App:
    """One host per task over ``model_store`` (``models`` restricts which names load)."""
    decoder = Decoder(workers=serving.decode_workers, max_pixels=serving.max_pixels)
    metrics = ServingMetrics()
    servicers: list[Servicer] = []
    hosts: list[ModelHost] = []
    for task in tasks:
        spec = TASKS.get(task)()
        host = ModelHost(model_store, spec.runtime(), serving, names=models, default=default_model, metrics=metrics)
        hosts.append(host)
        servicers.append(spec.servicer(host, decoder))
    servicers.append(ModelServicer(hosts))
    servicers.append(_kserve(hosts, decoder))
    return App(servicers, hosts, decoder, metrics)


async def run_app(app: App, config: ServerConfig, *, metrics_port: int | None = None, metrics_host: str | None = None,
                  on_metrics: Callable[[str], None] | None = None, **kwargs) -> None:
    """Serve ``app`` (kwargs go to services.server.serve). With ``metrics_port`` (0 = any free port)
    its Prometheus endpoint listens on ``metrics_host`` (default ``config.host``) first, with the server's
    TLS and tokens (services/metrics_http.py), and ``on_metrics`` gets its URL."""
    endpoint = None if metrics_port is None else start_metrics_endpoint(
        app.metrics, metrics_port, config.host if metrics_host is None else metrics_host, config.security)
    try:
        if endpoint is not None and on_metrics is not None:
            on_metrics(endpoint.url)
        await serve(config, app.servicers, startup=app.startup, shutdown=app.shutdown, metrics=app.metrics,
                    **kwargs)
    finally:
        if endpoint is not None:
            await asyncio.to_thread(endpoint.close)
