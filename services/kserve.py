"""KServe v2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) for every served model.

The service is the one of Triton's public ``grpc_service.proto``; its stubs come from the
``tritonclient`` package, so the stock ``tritonclient.grpc`` client (and any client generated from
that proto) works. Model names are the model store names. What each task takes and gives is in
services/kserve_tasks.py; this module only moves tensors and statuses:

- inputs come in ``raw_input_contents`` (BYTES elements as a 4-byte little-endian length, then
  the bytes) or in typed ``contents``; outputs always go out in ``raw_output_contents``;
- domain errors keep their statuses (services/errors.py), except a full queue: Triton answers
  that with UNAVAILABLE, so this path does too (the typed RPCs say RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib import metadata
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from models.checkpoints import ModelConfig
from models.errors import InvalidInputError, UnknownModelError, shown
from services.errors import QueueFullError, UnavailableError, UnimplementedError
from services.host import LoadedModel
from services.kserve_tasks import Codec, TensorSpec
from services.pipeline import Pipeline
from services.streaming import deadline_of, ordered_stream

PLATFORM = "pytorch"
_DTYPES = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
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


# --------------------------------------------------------------------------- tensors


def split_bytes(raw: bytes, name: str) -> list[bytes]:
    """A raw BYTES tensor (each element: uint32 little-endian length, then that many bytes) -> elements."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw) or pos + 4 + (size := struct.unpack_from("<I", raw, pos)[0]) > len(raw):
            raise InvalidInputError(
                f"input {name}: BYTES element {len(out)} is truncated; each element is a "
                f"4-byte little-endian length followed by that many bytes"
            )
        out.append(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


def join_bytes(array: np.ndarray) -> bytes:
    """A BYTES array (bytes or str elements) -> the raw length-prefixed form, in C order."""
    parts = []
    for value in array.ravel():
        data = value if isinstance(value, bytes) else str(value).encode()
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def _check_tensor(tensor: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec) -> tuple[int, ...]:
    if tensor.datatype not in spec.datatypes:
        raise InvalidInputError(
            f"input {spec.name} must be {' or '.join(spec.datatypes)}, got {shown(tensor.datatype) or '(none)'}"
        )
    shape = tuple(tensor.shape)
    if (
        len(shape) != len(spec.shape)
        or any(s < 1 for s in shape)
        or any(want not in (-1, got) for got, want in zip(shape, spec.shape))
    ):
        raise InvalidInputError(
            f"input {spec.name} has shape {list(shape)}; expected {list(spec.shape)} (-1: any size >= 1)"
        )
    return shape


def _array(tensor: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...], raw: bytes | None) -> np.ndarray:
    name, datatype, count = tensor.name, tensor.datatype, math.prod(shape)
    if datatype == "BYTES":
        values = split_bytes(raw, name) if raw is not None else list(tensor.contents.bytes_contents)
        if len(values) != count:
            raise InvalidInputError(
                f"input {name}: {len(values)} BYTES elements for shape {list(shape)} ({count} expected)"
            )
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    dtype = np.dtype(_DTYPES[datatype])
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInputError(
                f"input {name}: {len(raw)} bytes of raw data for {datatype} {list(shape)} "
                f"({count * dtype.itemsize} expected)"
            )
        return np.frombuffer(raw, dtype).reshape(shape)
    values = np.asarray(getattr(tensor.contents, _CONTENTS[datatype]))
    if values.size != count:
        raise InvalidInputError(
            f"input {name}: {values.size} values in contents for shape {list(shape)} ({count} expected)"
        )
    limits = np.iinfo(dtype) if dtype.kind in "iu" else None
    if limits is not None and values.size and not limits.min <= values.min() <= values.max() <= limits.max:
        raise InvalidInputError(f"input {name}: values outside the {datatype} range")
    return values.astype(dtype).reshape(shape)


def read_inputs(request: pb.ModelInferRequest, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The request's input tensors as arrays by name, checked against ``specs`` (INVALID_ARGUMENT)."""
    by_name, raw = {s.name: s for s in specs}, request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; give one per "
            f"input, in order (or none, and use contents)"
        )
    tensors: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = by_name.get(tensor.name)
        if spec is None or tensor.name in tensors:
            what = "unknown" if spec is None else "repeated"
            raise InvalidInputError(f"{what} input `{shown(tensor.name)}`; this model takes {sorted(by_name)}")
        tensors[tensor.name] = _array(tensor, _check_tensor(tensor, spec), raw[i] if raw else None)
    missing = [s.name for s in specs if not s.optional and s.name not in tensors]
    if missing or not tensors:
        raise InvalidInputError(
            f"missing input(s) {missing or sorted(by_name)}; this model takes "
            + ", ".join(f"{s.name} ({'/'.join(s.datatypes)} {list(s.shape)})" for s in specs)
        )
    return tensors


def infer_response(
    request: pb.ModelInferRequest, config: ModelConfig, values: dict[str, np.ndarray], specs: Sequence[TensorSpec]
) -> pb.ModelInferResponse:
    """Output arrays -> a ModelInferResponse (the requested outputs, or all), data in raw_output_contents."""
    response = pb.ModelInferResponse(model_name=config.name, model_version=config.version, id=request.id)
    by_name = {s.name: s for s in specs}
    for name in [o.name for o in request.outputs] or [n for n in by_name if n in values]:
        if name not in values:
            raise InvalidInputError(f"output {name} comes only when a request parameter asks for it (e.g. explain)")
        array, datatype = values[name], by_name[name].datatype
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(
            join_bytes(array) if datatype == "BYTES" else np.ascontiguousarray(array, _DTYPES[datatype]).tobytes()
        )
    return response


# --------------------------------------------------------------------------- metadata and config


def _config_tensor(cls: type, spec: TensorSpec, batched: bool) -> Any:
    """ModelInput / ModelOutput: dims exclude the batch dimension when max_batch_size > 0; a batch
    of scalars is dims [1] reshaped to [] (Triton's convention)."""
    dims = list(spec.shape[1:] if batched else spec.shape)
    kind = "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
    extra = {"optional": spec.optional} if cls is mc.ModelInput else {}
    return cls(
        name=spec.name,
        data_type=mc.DataType.Value(kind),
        dims=dims or [1],
        reshape=None if dims else mc.ModelTensorReshape(shape=[]),
        **extra,
    )


def model_config(loaded: LoadedModel, adapter: Codec, serving: Any) -> mc.ModelConfig:
    c = loaded.config
    params = {
        "task": c.task,
        "architecture": c.architecture,
        "classes": ",".join(c.classes),
        "request_parameters": ",".join(adapter.parameters),
        "device": str(loaded.device),
    }
    return mc.ModelConfig(
        name=c.name,
        platform=PLATFORM,
        max_batch_size=serving.max_batch_size if adapter.batched else 0,
        input=[_config_tensor(mc.ModelInput, s, adapter.batched) for s in adapter.inputs(c)],
        output=[_config_tensor(mc.ModelOutput, s, adapter.batched) for s in adapter.outputs(c)],
        dynamic_batching=mc.ModelDynamicBatching(
            max_queue_delay_microseconds=round(serving.max_delay_ms * 1000),
            default_queue_policy=mc.ModelQueuePolicy(max_queue_size=serving.max_queue_size),
        ),
        parameters={k: mc.ModelParameter(string_value=v) for k, v in params.items()},
    )


def _tensor_metadata(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


def _server_version() -> str:
    try:
        return metadata.version("cvtasks")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


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
        self.pipeline, self.codecs, self.stream_window = pipeline, dict(codecs), stream_window
        self.hosts = list(pipeline.hosts.values())

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

    def _find(self, name: str, version: str = "") -> tuple[LoadedModel, Codec]:
        served = {info.name: host for host in self.hosts for info in host.list_models()}
        if name not in served:
            if not all(host.list_models() for host in self.hosts):
                raise UnavailableError("models are still loading; retry shortly")
            raise UnknownModelError(f"Unknown model `{shown(name)}`. This server serves: {sorted(served)}")
        task = served[name].task.name
        return self.pipeline.model(task, name, version), self.codecs[task]

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        infos = [host.list_models() for host in self.hosts]
        return pb.ServerReadyResponse(ready=all(infos) and all(i.ready for models in infos for i in models))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        ready = any(
            i.name == request.name and i.ready and request.version in ("", i.version)
            for host in self.hosts
            for i in host.list_models()
        )
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        return pb.ServerMetadataResponse(name="cvtasks", version=_server_version(), extensions=["model_configuration"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        loaded, adapter = self._find(request.name, request.version)
        c = loaded.config
        return pb.ModelMetadataResponse(
            name=c.name,
            versions=[c.version],
            platform=PLATFORM,
            inputs=_tensor_metadata(adapter.inputs(c)),
            outputs=_tensor_metadata(adapter.outputs(c)),
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext):
        loaded, codec = self._find(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config(loaded, codec, self.pipeline.limits))

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext):
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=i.name, version=i.version, state="READY" if i.ready else "LOADING"
                )
                for host in self.hosts
                for i in host.list_models()
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
        loaded, codec = self._find(request.model_name, request.model_version)
        config, outputs = loaded.config, codec.outputs(loaded.config)
        unknown = sorted({o.name for o in request.outputs} - {s.name for s in outputs})
        if unknown:
            raise InvalidInputError(f"unknown output(s) {shown(unknown)}; this model gives {[s.name for s in outputs]}")
        tensors = read_inputs(request, codec.inputs(config))
        limit = self.pipeline.limits.max_batch_size
        if codec.batched and (batch := next(iter(tensors.values())).shape[0]) > limit:
            raise InvalidInputError(
                f"batch of {batch} exceeds this model's max_batch_size {limit}; split it into several requests"
            )
        call = codec.call(config, tensors, codec.options(request.parameters))

        def encode(answer: Any) -> pb.ModelInferResponse:
            return infer_response(request, config, codec.tensors(answer), outputs)

        try:
            async with self.pipeline.run(loaded, call, deadline) as answer:
                return await self.pipeline.encode(encode, answer)
        except QueueFullError as exc:  # Triton answers a full queue with UNAVAILABLE
            raise UnavailableError(str(exc)) from exc
