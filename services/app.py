"""Assemble a serving process: per-task model hosts + servicers + ModelService.

A new task plugs in with one ``TASKS`` entry: its TaskRuntime and its servicer class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.registry import Registry
from services.host import ModelHost, ServingConfig, TaskRuntime
from services.imaging import Decoder
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


TASKS: Registry[Callable[[], TaskService]] = Registry("served task")
TASKS.register("detection")(_detection)
TASKS.register("segmentation")(_segmentation)
TASKS.register("captioning")(_captioning)
TASKS.register("generation")(_generation)


@dataclass
class App:
    """Servicers plus the hooks serve() runs around them."""

    servicers: list[Servicer]
    hosts: list[ModelHost]
    decoder: Decoder

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
    servicers: list[Servicer] = []
    hosts: list[ModelHost] = []
    for task in tasks:
        spec = TASKS.get(task)()
        host = ModelHost(model_store, spec.runtime(), serving, names=models, default=default_model)
        hosts.append(host)
        servicers.append(spec.servicer(host, decoder))
    servicers.append(ModelServicer(hosts))
    return App(servicers, hosts, decoder)


async def run_app(app: App, config: ServerConfig, **kwargs) -> None:
    await serve(config, app.servicers, startup=app.startup, shutdown=app.shutdown, **kwargs)
