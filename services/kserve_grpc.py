"""KServe v2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) for every served model.

The service is the one of Triton's public ``grpc_service.proto``; its stubs come from the
``tritonclient`` package, so the stock ``tritonclient.grpc`` client (and any client generated from
that proto) works. Model names are the model store names. What a request means is the data plane's
(services/kserve.py); this module only moves tensors and statuses:

- inputs come in ``raw_input_contents`` (BYTES elements as a 4-byte little-endian length, then
  the bytes) or in typed ``contents``; outputs always go out in ``raw_output_contents``;
- domain errors keep their statuses (services/errors.py), except a full queue: Triton answers
  that with UNAVAILABLE, so this path does too (the typed RPCs say RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from models.checkpoints import ModelConfig
from models.errors import InvalidInputError
from services.errors import UnimplementedError
from services.kserve import PLATFORM, SERVER_NAME, InferCall, InputTensor, KServe, OutputTensor, server_version
from services.kserve_tasks import Codec, TensorSpec
from services.pipeline import Pipeline
from services.streaming import deadline_of, ordered_stream

_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def infer_call(request: pb.ModelInferRequest) -> InferCall:
    """A ModelInferRequest in the data plane's terms: tensors, parameters as plain values."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; give one per "
            f"input, in order (or none, and use contents)"
        )
    inputs = [
        InputTensor(
            t.name,
            t.datatype,
            tuple(t.shape),
            raw=raw[i] if raw else None,
            values=() if raw or t.datatype not in _CONTENTS else getattr(t.contents, _CONTENTS[t.datatype]),
        )
        for i, t in enumerate(request.inputs)
    ]
    parameters = {
        key: getattr(param, choice) if (choice := param.WhichOneof("parameter_choice")) else None
        for key, param in request.parameters.items()
    }
    return InferCall(
        request.model_name,
        request.model_version,
        inputs,
        parameters,
        [o.name for o in request.outputs],
        request.id,
    )


def infer_response(
    request: pb.ModelInferRequest, config: ModelConfig, outputs: list[OutputTensor]
) -> pb.ModelInferResponse:
    """Output tensors -> a ModelInferResponse, data in raw_output_contents."""
    response = pb.ModelInferResponse(model_name=config.name, model_version=config.version, id=request.id)
    for tensor in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        response.raw_output_contents.append(tensor.binary())
    return response


def _tensor_metadata(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


def _not_served(rpc: str, instead: str) -> Any:
    """An RPC of the KServe/Triton service that this server does not implement: UNIMPLEMENTED, saying ``instead``."""

    async def refuse(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise UnimplementedError(f"{rpc} is not implemented by cvtasks; {instead}")

    refuse.__name__ = rpc
    return refuse


_SHARED_MEMORY = "send tensors in the request (raw_input_contents or contents)"

# --------------------------------------------------------------------------- the servicer


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over the ModelHosts of every served task.

    Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig,
    ModelInfer, ModelStreamInfer (responses in request order; a failed request answers with
    ``error_message`` and the stream goes on), RepositoryIndex. The others answer UNIMPLEMENTED
    with what to use instead."""

    service_name = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

    def __init__(self, pipeline: Pipeline, codecs: Mapping[str, Codec], *, stream_window: int = 16) -> None:
        self.plane, self.pipeline, self.stream_window = KServe(pipeline, codecs), pipeline, stream_window

    def add_to_server(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    ModelStatistics = _not_served(
        "ModelStatistics",
        "per-model counts and latencies are on the Prometheus endpoint (cvtasks serve --metrics-port)",
    )
    RepositoryModelLoad = _not_served("RepositoryModelLoad", "load models with cvtasks.v1.ModelService/LoadModel")
    RepositoryModelUnload = _not_served(
        "RepositoryModelUnload", "unload models with cvtasks.v1.ModelService/UnloadModel"
    )
    SystemSharedMemoryStatus = _not_served("SystemSharedMemoryStatus", _SHARED_MEMORY)
    SystemSharedMemoryRegister = _not_served("SystemSharedMemoryRegister", _SHARED_MEMORY)
    SystemSharedMemoryUnregister = _not_served("SystemSharedMemoryUnregister", _SHARED_MEMORY)
    CudaSharedMemoryStatus = _not_served("CudaSharedMemoryStatus", _SHARED_MEMORY)
    CudaSharedMemoryRegister = _not_served("CudaSharedMemoryRegister", _SHARED_MEMORY)
    CudaSharedMemoryUnregister = _not_served("CudaSharedMemoryUnregister", _SHARED_MEMORY)
    TraceSetting = _not_served("TraceSetting", "there is no tracing; the JSON log has one line per RPC")
    LogSettings = _not_served("LogSettings", "set the log level with cvtasks serve --log-level")

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        return pb.ServerReadyResponse(ready=self.plane.server_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=["model_configuration"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        meta = self.plane.metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta.config.name,
            versions=[meta.config.version],
            platform=PLATFORM,
            inputs=_tensor_metadata(meta.inputs),
            outputs=_tensor_metadata(meta.outputs),
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext):
        return pb.ModelConfigResponse(config=self.plane.model_config(request.name, request.version))

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext):
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=i.name, version=i.version, state="READY" if i.ready else "LOADING"
                )
                for i in self.plane.models()
                if i.ready or not request.ready
            ]
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        return await self._infer(request, deadline_of(context, self.pipeline.limits))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        deadline = deadline_of(context)

        async def handle(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, deadline))

        def failed(request: pb.ModelInferRequest, error: Any) -> pb.ModelStreamInferResponse:
            return pb.ModelStreamInferResponse(
                error_message=error.message,
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id
                ),
            )

        async for response in ordered_stream(request_iterator, handle, on_error=failed, window=self.stream_window):
            yield response

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        if not request.model_name:
            raise InvalidInputError("model_name is required; ask RepositoryIndex (or ListModels) for the names")
        return await self.plane.infer(
            infer_call(request), deadline, lambda config, outputs: infer_response(request, config, outputs)
        )
