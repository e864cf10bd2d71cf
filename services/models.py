"""ModelService: lists and describes the loaded models of every task this process serves, and loads
and unloads them (in a ``--workers`` server, in every worker: services/workers.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from models import checkpoints
from models.errors import InvalidInputError, UnknownModelError, shown
from services.host import LoadedModelInfo
from services.pb import models_pb2, models_pb2_grpc


class ModelSource(Protocol):
    """What ModelService needs of a task's models (a ModelHost): list, (re)load in two steps, unload."""

    task: Any  # the task object (models/task.py); its ``name`` is the task's name
    store: Path
    default_model: str

    def list_models(self) -> list[LoadedModelInfo]: ...

    async def prepare(self, name: str) -> Any: ...

    async def install(self, loaded: Any) -> None: ...

    async def discard(self, loaded: Any) -> None: ...

    async def unload(self, name: str) -> str: ...

    def set_default(self, name: str) -> None: ...


class Cluster(Protocol):
    """Where a worker of ``cvtasks serve --workers N`` sends a checked model change, so that it
    takes effect in every worker or in none (services/worker.py)."""

    index: int  # this worker's

    async def change(self, op: str, name: str, make_default: bool) -> dict[str, Any]: ...


@dataclass
class Change:
    """A LoadModel ("load") or UnloadModel ("unload") that is checked (and for a load, loaded and
    warmed up) but not yet applied: ``commit`` applies it, ``abort`` drops it."""

    op: str
    name: str
    source: ModelSource
    make_default: bool = False
    loaded: Any = None  # the prepared model of a load

    async def commit(self) -> dict[str, Any]:
        """Apply the change; returns {"default_model": the task's default afterwards}."""
        if self.op == "unload":
            return {"default_model": await self.source.unload(self.name)}
        await self.source.install(self.loaded)
        if self.make_default:
            self.source.set_default(self.name)
        return {"default_model": self.source.default_model}

    async def abort(self) -> None:
        if self.loaded is not None:
            await self.source.discard(self.loaded)


def info_proto(info: LoadedModelInfo) -> models_pb2.ModelInfo:
    return models_pb2.ModelInfo(
        name=info.name,
        task=info.task,
        architecture=info.architecture,
        classes=info.classes,
        version=info.version,
        device=info.device,
        ready=info.ready,
        input_size=info.input_size,
        created=info.created,
        metrics=info.metrics,
        is_default=info.is_default,
        runtime=info.runtime,
        precision=info.precision,
    )


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    """``cvtasks.v1.ModelService`` over one or more model sources."""

    service_name = models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name

    def __init__(self, sources: Sequence[ModelSource]) -> None:
        self.sources = list(sources)
        self.cluster: Cluster | None = None  # set in a worker of ``serve --workers N``

    def add_to_server(self, server: grpc.aio.Server) -> None:
        models_pb2_grpc.add_ModelServiceServicer_to_server(self, server)

    def _all(self) -> list[LoadedModelInfo]:
        return [info for source in self.sources for info in source.list_models()]

    async def ListModels(self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext):
        infos = [i for i in self._all() if not request.task or i.task == request.task]
        if self.cluster is not None:  # which worker answered: for tests and debugging
            context.set_trailing_metadata((("cvtasks-worker", str(self.cluster.index)),))
        return models_pb2.ListModelsResponse(models=[info_proto(i) for i in infos])

    async def GetModel(self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext):
        infos = self._all()
        for info in infos:
            if info.name == request.name or (not request.name and info.is_default):
                return info_proto(info)
        raise UnknownModelError(
            f"Unknown model `{shown(request.name)}`. This server serves: {sorted(i.name for i in infos)}"
        )

    def _source_for(self, task: str) -> ModelSource:
        for source in self.sources:
            if source.task.name == task:
                return source
        raise InvalidInputError(
            f"this server does not serve {task} models; it serves {sorted(s.task.name for s in self.sources)}"
        )

    def _load_target(self, name: str) -> ModelSource:
        """The source that would load ``name``, after the checks a client is answered by at once."""
        if not name or not self.sources:
            raise InvalidInputError("name the model-store folder to load")
        folder = checkpoints.find(self.sources[0].store, name)
        if folder is None:  # the client learns the name, not the file system: no paths, no store folders
            raise UnknownModelError(
                f"Unknown model `{shown(name)}`: the model store has no model of that "
                f"name. Available models (loaded here): {sorted(i.name for i in self._all())}"
            )
        return self._source_for(checkpoints.load_config(folder).task)

    def _unload_target(self, name: str) -> ModelSource:
        if not name:
            raise InvalidInputError("name the model to unload")
        for source in self.sources:
            if any(i.name == name for i in source.list_models()):
                return source
        raise UnknownModelError(
            f"Unknown model `{shown(name)}`. This server serves: {sorted(i.name for i in self._all())}"
        )

    async def prepare(self, op: str, name: str, make_default: bool = False) -> Change:
        """Check a change (op "load" or "unload") and, for a load, load and warm the model up."""
        if op == "load":
            source = self._load_target(name)
            return Change(op, name, source, make_default, await source.prepare(name))
        if op == "unload":
            return Change(op, name, self._unload_target(name))
        raise InvalidInputError(f"unknown model change {op!r}; expected 'load' or 'unload'")

    async def _apply(self, op: str, name: str, make_default: bool = False) -> dict[str, Any]:
        """Here alone, or (workers) in every worker through the cluster, after this worker's checks."""
        if self.cluster is None:
            return await (await self.prepare(op, name, make_default)).commit()
        (self._load_target if op == "load" else self._unload_target)(name)
        return await self.cluster.change(op, name, make_default)

    async def LoadModel(self, request: models_pb2.LoadModelRequest, context: grpc.aio.ServicerContext):
        await self._apply("load", request.name, request.make_default)
        return next(info_proto(i) for i in self._all() if i.name == request.name)

    async def UnloadModel(self, request: models_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext):
        result = await self._apply("unload", request.name)
        return models_pb2.UnloadModelResponse(name=request.name, default_model=result["default_model"])
