"""Assemble a serving process: per-task model hosts, the request pipeline over them, the typed
servicers, KServe v2 and ModelService over gRPC, and (``--http-port``) the same over HTTP.

A new task plugs in with one ``services.tasks.SERVICES`` entry (its typed servicer and KServe codec).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.tasks import get_task
from services.host import ModelHost, ServingConfig
from services.imaging import Decoder, jpeg_batch_device
from services.kserve import server_version
from services.kserve_grpc import KServeServicer
from services.metrics import ServingMetrics
from services.metrics_http import start_metrics_endpoint
from services.models import ModelServicer
from services.pipeline import Pipeline
from services.server import Readiness, ServerConfig, Servicer, serve
from services.tasks import SERVICES
from services.typed import TypedService


@dataclass
class App:
    """Servicers plus the hooks serve() runs around them, and the process's metrics."""

    servicers: list[Servicer]
    hosts: list[ModelHost]
    decoder: Decoder
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    readiness: Readiness = field(default_factory=Readiness)  # what health and HTTP's ready route say
    # A worker of ``serve --workers N``: joins the other workers once its models are warm (services/worker.py).
    join: Callable[[], Awaitable[None]] | None = None

    @property
    def models(self) -> ModelServicer:
        return next(s for s in self.servicers if isinstance(s, ModelServicer))

    def http_app(self, config: ServerConfig) -> Any:
        """The HTTP/REST app (services/http.py) over the same servicers, pipeline and models."""
        from services.http import create_http_app
        from services.http_typed import typed_router
        from services.kserve_rest import kserve_router

        typed = [s for s in self.servicers if isinstance(s, TypedService)]
        kserve = next(s for s in self.servicers if isinstance(s, KServeServicer))
        routers = [kserve_router(kserve.plane, lambda: self.readiness.serving), typed_router(typed, self.models)]
        return create_http_app(
            routers,
            security=config.security,
            max_body_bytes=config.max_message_bytes,
            metrics=self.metrics,
            version=server_version(),
            cors_origins=config.cors_origins,
        )

    async def startup(self) -> None:
        for host in self.hosts:
            await host.load_all()
        if self.join is not None:
            await self.join()

    async def shutdown(self) -> None:
        await asyncio.gather(*(host.close() for host in self.hosts))
        await self.decoder.stop()


def build_app(
    tasks: Sequence[str],
    model_store: str | Path,
    serving: ServingConfig = ServingConfig(),
    *,
    models: Sequence[str] = (),
    default_model: str | None = None,
    metrics: ServingMetrics | None = None,
) -> App:
    """One host per task over ``model_store`` (``models`` restricts which names load), counting into
    ``metrics`` (default: new ones)."""
    jpeg_device = jpeg_batch_device(serving.gpu_decode, serving.devices[0] if serving.devices else serving.device)
    decoder = Decoder(workers=serving.decode_workers, max_pixels=serving.max_pixels, jpeg_device=jpeg_device)
    metrics = metrics or ServingMetrics()
    hosts = [
        ModelHost(model_store, get_task(task), serving, names=models, default=default_model, metrics=metrics)
        for task in tasks
    ]
    pipeline = Pipeline(hosts, decoder, serving)
    servicers: list[Servicer] = [SERVICES.get(task).typed(pipeline) for task in tasks]
    codecs = {task: SERVICES.get(task).kserve for task in tasks}
    servicers += [ModelServicer(hosts), KServeServicer(pipeline, codecs)]
    return App(servicers, hosts, decoder, metrics)


async def run_app(
    app: App,
    config: ServerConfig,
    *,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
    on_metrics: Callable[[str], None] | None = None,
    **kwargs,
) -> None:
    """Serve ``app`` (kwargs go to services.server.serve). With ``metrics_port`` (0 = any free port)
    its Prometheus endpoint listens on ``metrics_host`` (default ``config.host``) first, with the server's
    TLS and tokens (services/metrics_http.py), and ``on_metrics`` gets its URL."""
    endpoint = (
        None
        if metrics_port is None
        else start_metrics_endpoint(
            app.metrics, metrics_port, config.host if metrics_host is None else metrics_host, config.security
        )
    )
    try:
        if endpoint is not None and on_metrics is not None:
            on_metrics(endpoint.url)
        await serve(
            config,
            app.servicers,
            startup=app.startup,
            shutdown=app.shutdown,
            metrics=app.metrics,
            http_app=app.http_app(config) if config.http_port is not None else None,
            readiness=app.readiness,
            **kwargs,
        )
    finally:
        if endpoint is not None:
            await asyncio.to_thread(endpoint.close)
