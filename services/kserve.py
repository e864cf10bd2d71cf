"""The KServe v2 / Open Inference Protocol data plane, shared by its two transports.

services/kserve_grpc.py (``inference.GRPCInferenceService``) and services/kserve_rest.py (the
``/v2`` REST routes) only move tensors and statuses; what a request means is here once: model
lookup by store name and version, readiness, metadata, the Triton model config, and inference
through the request pipeline with each task's codec (services/kserve_tasks.py).

Tensors come in transport-free: ``InputTensor`` holds a name, datatype and shape and either the
binary form (gRPC ``raw_input_contents``, REST's binary tensor data extension: BYTES elements as
a 4-byte little-endian length, then the bytes) or the typed values (gRPC ``contents``, REST JSON
``data``: a flat, row-major list). Outputs go back as arrays, each transport encoding them.

A full queue answers UNAVAILABLE (503 over HTTP), as Triton does; the typed APIs say
RESOURCE_EXHAUSTED (429).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypeVar

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from models.checkpoints import ModelConfig
from models.errors import InvalidInputError, UnknownModelError, shown
from services.errors import QueueFullError, UnavailableError
from services.host import LoadedModel, LoadedModelInfo
from services.kserve_tasks import Codec, TensorSpec
from services.pipeline import Pipeline

R = TypeVar("R")
PLATFORM = "pytorch"
SERVER_NAME = "cvtasks"
EXTENSIONS = ["model_configuration", "binary_tensor_data"]
DTYPES = {
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


# --------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class InputTensor:
    """One input as a transport read it: ``raw`` (the binary form) or ``values`` (typed values,
    flat and row-major: numbers, booleans, or bytes/str for BYTES)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None
    values: Sequence[Any] = ()


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray

    def binary(self) -> bytes:
        """The binary form: BYTES length-prefixed, numbers little-endian in C order."""
        if self.datatype == "BYTES":
            return join_bytes(self.array)
        return np.ascontiguousarray(self.array, DTYPES[self.datatype]).tobytes()


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


def _check_tensor(tensor: InputTensor, spec: TensorSpec) -> tuple[int, ...]:
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


def _bytes_array(tensor: InputTensor, shape: tuple[int, ...], count: int) -> np.ndarray:
    name = tensor.name
    values = split_bytes(tensor.raw, name) if tensor.raw is not None else list(tensor.values)
    if len(values) != count:
        raise InvalidInputError(
            f"input {name}: {len(values)} BYTES elements for shape {list(shape)} ({count} expected)"
        )
    array = np.empty(count, dtype=object)
    array[:] = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
    return array.reshape(shape)


def _values_array(tensor: InputTensor, dtype: np.dtype, shape: tuple[int, ...], count: int) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    try:
        values = np.asarray(tensor.values)
    except ValueError as exc:  # ragged nesting
        raise InvalidInputError(f"input {name}: data is not a flat list of numbers ({exc})") from exc
    if values.size != count:
        raise InvalidInputError(
            f"input {name}: {values.size} values in its data for shape {list(shape)} ({count} expected)"
        )
    kinds = "b" if dtype.kind == "b" else ("iu" if dtype.kind in "iu" else "iuf")
    if values.size and values.dtype.kind not in kinds:
        what = "booleans" if dtype.kind == "b" else "integers" if dtype.kind in "iu" else "numbers"
        raise InvalidInputError(f"input {name}: {datatype} data must be {what}")
    limits = np.iinfo(dtype) if dtype.kind in "iu" else None
    if limits is not None and values.size and not limits.min <= values.min() <= values.max() <= limits.max:
        raise InvalidInputError(f"input {name}: values outside the {datatype} range")
    return values.astype(dtype).reshape(shape)


def to_array(tensor: InputTensor, spec: TensorSpec) -> np.ndarray:
    """``tensor`` as an array, checked against ``spec`` (InvalidInputError says what to fix)."""
    shape = _check_tensor(tensor, spec)
    count = math.prod(shape)
    if tensor.datatype == "BYTES":
        return _bytes_array(tensor, shape, count)
    dtype = np.dtype(DTYPES[tensor.datatype])
    if tensor.raw is None:
        return _values_array(tensor, dtype, shape, count)
    if len(tensor.raw) != count * dtype.itemsize:
        raise InvalidInputError(
            f"input {tensor.name}: {len(tensor.raw)} bytes of raw data for {tensor.datatype} {list(shape)} "
            f"({count * dtype.itemsize} expected)"
        )
    return np.frombuffer(tensor.raw, dtype).reshape(shape)


def read_inputs(tensors: Sequence[InputTensor], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The request's input tensors as arrays by name, checked against ``specs``."""
    by_name = {s.name: s for s in specs}
    arrays: dict[str, np.ndarray] = {}
    for tensor in tensors:
        spec = by_name.get(tensor.name)
        if spec is None or tensor.name in arrays:
            what = "unknown" if spec is None else "repeated"
            raise InvalidInputError(f"{what} input `{shown(tensor.name)}`; this model takes {sorted(by_name)}")
        arrays[tensor.name] = to_array(tensor, spec)
    missing = [s.name for s in specs if not s.optional and s.name not in arrays]
    if missing or not arrays:
        raise InvalidInputError(
            f"missing input(s) {missing or sorted(by_name)}; this model takes "
            + ", ".join(f"{s.name} ({'/'.join(s.datatypes)} {list(s.shape)})" for s in specs)
        )
    return arrays


# --------------------------------------------------------------------------- the model config


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


def model_config(loaded: LoadedModel, codec: Codec, serving: Any) -> mc.ModelConfig:
    """Triton's ``ModelConfig`` of a served model (the gRPC answer; REST sends its JSON mapping)."""
    c = loaded.config
    params = {
        "task": c.task,
        "architecture": c.architecture,
        "classes": ",".join(c.classes),
        "request_parameters": ",".join(codec.parameters),
        "device": str(loaded.device),
        "runtime": loaded.served.runtime,
        "precision": loaded.served.precision,
    }
    return mc.ModelConfig(
        name=c.name,
        platform=PLATFORM,
        max_batch_size=serving.max_batch_size if codec.batched else 0,
        input=[_config_tensor(mc.ModelInput, s, codec.batched) for s in codec.inputs(c)],
        output=[_config_tensor(mc.ModelOutput, s, codec.batched) for s in codec.outputs(c)],
        dynamic_batching=mc.ModelDynamicBatching(
            max_queue_delay_microseconds=round(serving.max_delay_ms * 1000),
            default_queue_policy=mc.ModelQueuePolicy(max_queue_size=serving.max_queue_size),
        ),
        parameters={k: mc.ModelParameter(string_value=v) for k, v in params.items()},
    )


def server_version() -> str:
    try:
        return metadata.version("cvtasks")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


# --------------------------------------------------------------------------- the data plane


@dataclass(frozen=True)
class InferCall:
    """One inference request as a transport read it. ``parameters``: name -> plain value (None:
    unset); ``outputs``: the names asked for (empty: every output, in the model's order)."""

    model: str
    version: str = ""
    inputs: Sequence[InputTensor] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    outputs: Sequence[str] = ()
    id: str = ""


@dataclass(frozen=True)
class Metadata:
    config: ModelConfig
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class KServe:
    """The KServe v2 data plane over the request pipeline and each served task's codec."""

    def __init__(self, pipeline: Pipeline, codecs: Mapping[str, Codec]) -> None:
        self.pipeline, self.codecs = pipeline, dict(codecs)
        self.hosts = list(pipeline.hosts.values())

    def find(self, name: str, version: str = "") -> tuple[LoadedModel, Codec]:
        served = {info.name: host for host in self.hosts for info in host.list_models()}
        if name not in served:
            if not all(host.list_models() for host in self.hosts):
                raise UnavailableError("models are still loading; retry shortly")
            raise UnknownModelError(f"Unknown model `{shown(name)}`. This server serves: {sorted(served)}")
        task = served[name].task.name
        return self.pipeline.model(task, name, version), self.codecs[task]

    def models(self) -> list[LoadedModelInfo]:
        return [info for host in self.hosts for info in host.list_models()]

    def server_ready(self) -> bool:
        infos = [host.list_models() for host in self.hosts]
        return all(infos) and all(i.ready for models in infos for i in models)

    def model_ready(self, name: str, version: str = "") -> bool:
        return any(i.name == name and i.ready and version in ("", i.version) for i in self.models())

    def metadata(self, name: str, version: str = "") -> Metadata:
        loaded, codec = self.find(name, version)
        return Metadata(loaded.config, codec.inputs(loaded.config), codec.outputs(loaded.config))

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        loaded, codec = self.find(name, version)
        return model_config(loaded, codec, self.pipeline.limits)

    async def infer(
        self, call: InferCall, deadline: float | None, encode: Callable[[ModelConfig, list[OutputTensor]], R]
    ) -> R:
        """Run ``call``; returns ``encode(config, outputs)`` (the output tensors asked for, in their
        order), run in the decode pool (building a wire response is CPU work) while the request
        still holds its admission."""
        if not call.model:
            raise InvalidInputError("the model name is required; ask the repository index (or ListModels) for them")
        loaded, codec = self.find(call.model, call.version)
        config, specs = loaded.config, codec.outputs(loaded.config)
        known = [s.name for s in specs]
        unknown = sorted(set(call.outputs) - set(known))
        if unknown:
            raise InvalidInputError(f"unknown output(s) {shown(unknown)}; this model gives {known}")
        tensors = read_inputs(call.inputs, codec.inputs(config))
        limit = self.pipeline.limits.max_batch_size
        if codec.batched and (batch := next(iter(tensors.values())).shape[0]) > limit:
            raise InvalidInputError(
                f"batch of {batch} exceeds this model's max_batch_size {limit}; split it into several requests"
            )
        request = codec.call(config, tensors, codec.options(call.parameters))
        types = {s.name: s.datatype for s in specs}

        def outputs(answer: Any) -> Any:
            values = codec.tensors(answer)
            names = list(call.outputs) or [n for n in known if n in values]  # an optional output: when asked for
            absent = [n for n in names if n not in values]
            if absent:
                raise InvalidInputError(
                    f"output {absent[0]} comes only when a request parameter asks for it (e.g. explain)"
                )
            return encode(config, [OutputTensor(n, types[n], values[n]) for n in names])

        try:
            async with self.pipeline.run(loaded, request, deadline) as answer:
                return await self.pipeline.encode(outputs, answer)
        except QueueFullError as exc:  # Triton answers a full queue with UNAVAILABLE
            raise UnavailableError(str(exc)) from exc
