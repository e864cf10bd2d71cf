"""ModelService: lists and describes the loaded models of every task this process serves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc

from models import checkpoints
from models.errors import InvalidInputError, UnknownModelError, shown
from services.host import LoadedModelInfo
from services.pb import models_pb2, models_pb2_grpc


class ModelSource(Protocol):
    """What ModelService needs of a task's models (a ModelHost): list, (re)load, unload."""

    task: Any  # the task object (models/task.py); its ``name`` is the task's name
    store: Path

    def list_models(self) -> list[LoadedModelInfo]: ...

    async def load(self, name: str) -> Any: ...

    async def unload(self, name: str) -> str: ...

    def set_default(self, name: str) -> None: ...


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

    def add_to_server(self, server: grpc.aio.Server) -> None:
        models_pb2_grpc.add_ModelServiceServicer_to_server(self, server)

    def _all(self) -> list[LoadedModelInfo]:
        return [info for source in self.sources for info in source.list_models()]

    async def ListModels(self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext):
        infos = [i for i in self._all() if not request.task or i.task == request.task]
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

    async def LoadModel(self, request: models_pb2.LoadModelRequest, context: grpc.aio.ServicerContext):
        if not request.name or not self.sources:
            raise InvalidInputError("name the model-store folder to load")
        folder = checkpoints.find(self.sources[0].store, request.name)
        if folder is None:  # the client learns the name, not the file system: no paths, no store folders
            raise UnknownModelError(
                f"Unknown model `{shown(request.name)}`: the model store has no model of that "
                f"name. Available models (loaded here): {sorted(i.name for i in self._all())}"
            )
        config = checkpoints.load_config(folder)
        source = self._source_for(config.task)
        await source.load(request.name)
        if request.make_default:
            source.set_default(request.name)
        return next(info_proto(i) for i in source.list_models() if i.name == request.name)

    async def UnloadModel(self, request: models_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext):
        if not request.name:
            raise InvalidInputError("name the model to unload")
        for source in self.sources:
            if any(i.name == request.name for i in source.list_models()):
                default = await source.unload(request.name)
                return models_pb2.UnloadModelResponse(name=request.name, default_model=default)
        raise UnknownModelError(
            f"Unknown model `{shown(request.name)}`. This server serves: {sorted(i.name for i in self._all())}"
        )
