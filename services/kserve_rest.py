"""KServe v2 / Open Inference Protocol over HTTP/REST: the ``/v2`` routes, over the same data
plane as the gRPC service (services/kserve.py), so the inputs, outputs, parameters and statuses
are the gRPC path's; the stock ``tritonclient.http`` client works.

The request body is the protocol's JSON (tensor ``data`` flat and row-major; BYTES elements as
strings), or, with Triton's binary tensor data extension, that JSON (its length in the
``Inference-Header-Content-Length`` header) followed by the binary inputs (each input with
``parameters.binary_data_size``), in input order: BYTES elements as a 4-byte little-endian
length then the bytes, numbers little-endian. Outputs go back as JSON ``data`` unless asked for
in binary (``outputs[i].parameters.binary_data``, or the request parameter
``binary_data_output`` for every output), then after the JSON in the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict

from models.checkpoints import ModelConfig
from models.errors import InvalidInputError, shown
from services.errors import UnavailableError, UnsupportedMediaTypeError
from services.kserve import (
    EXTENSIONS,
    PLATFORM,
    SERVER_NAME,
    InferCall,
    InputTensor,
    KServe,
    OutputTensor,
    server_version,
)
from services.kserve_tasks import TensorSpec

HEADER_LENGTH = "inference-header-content-length"
# What an inference request may be sent as (curl -d sends application/x-www-form-urlencoded unless told).
_BODY_TYPES = ("", "application/json", "application/octet-stream", "text/plain", "application/x-www-form-urlencoded")


def deadline(limits: Any, seconds: float | None = None) -> float:
    """A request's deadline (time.monotonic()): ``seconds`` cut to the server's maximum, or the default."""
    remaining = limits.default_deadline_s if seconds is None else min(seconds, limits.max_deadline_s)
    return time.monotonic() + remaining


# --------------------------------------------------------------------------- the request


def _field(doc: dict, key: str, kind: type, where: str, default: Any = None) -> Any:
    value = doc.get(key, default)
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise InvalidInputError(f"{where}`{key}` must be a JSON {_KIND_NAMES[kind]}, got {shown(repr(value))}")
    return value


_KIND_NAMES = {str: "string", int: "integer", list: "array", dict: "object", bool: "boolean"}


def _header(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header of the body (all of it, or its first ``header_length`` bytes) and the binary rest."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length is {shown(header_length)}: it must be the byte length of "
                f"the JSON that starts the body, at most the body's {len(body)} bytes"
            )
        size = int(header_length)
    if not body[:size].strip():
        raise InvalidInputError(
            'the request body is empty; send the inference request as JSON: {"inputs": [{"name": ..., '
            '"datatype": ..., "shape": [...], "data": [...]}]}'
        )
    try:
        doc = json.loads(body[:size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            f"the request body is not JSON ({exc}); send the inference request as JSON, or with binary tensors "
            "the JSON first and its length in the Inference-Header-Content-Length header"
        ) from exc
    if not isinstance(doc, dict):
        raise InvalidInputError("the inference request must be a JSON object with an `inputs` array")
    return doc, body[size:]


def _input(item: Any, i: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    where = f"inputs[{i}]: "
    if not isinstance(item, dict):
        raise InvalidInputError(f"{where}each input must be a JSON object with name, datatype, shape and data")
    name, datatype = _field(item, "name", str, where, ""), _field(item, "datatype", str, where, "")
    shape = _field(item, "shape", list, where, [])
    if not name or not datatype or any(not isinstance(s, int) or isinstance(s, bool) for s in shape):
        raise InvalidInputError(f"{where}give `name` and `datatype` (strings) and `shape` (an array of integers)")
    parameters = _field(item, "parameters", dict, where, {})
    size = _field(parameters, "binary_data_size", int, where)
    if size is not None:
        if size < 0 or offset + size > len(binary):
            raise InvalidInputError(
                f"{where}binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} binary bytes left)"
            )
        return InputTensor(name, datatype, tuple(shape), raw=bytes(binary[offset : offset + size])), offset + size
    if "data" not in item:
        raise InvalidInputError(f"{where}input {shown(name)} has no `data` (and no binary_data_size)")
    data = item["data"]
    values = _flat(data if isinstance(data, list) else [data])
    return InputTensor(name, datatype, tuple(shape), values=values), offset


def _flat(values: list) -> list:
    """Nested JSON arrays (some clients send the tensor's nesting) -> one flat, row-major list."""
    if not any(isinstance(v, list) for v in values):
        return values
    return [x for v in values for x in (_flat(v) if isinstance(v, list) else [v])]


def read_request(model: str, version: str, body: bytes, header_length: str | None) -> tuple[InferCall, dict]:
    """The body -> the data plane's InferCall, and which outputs go back in binary (name -> bool, and
    "" -> the default)."""
    doc, binary = _header(body, header_length)
    inputs, offset = [], 0
    raw = memoryview(binary)
    for i, item in enumerate(_field(doc, "inputs", list, "", [])):
        tensor, offset = _input(item, i, raw, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInputError(
            f"the body has {len(binary) - offset} binary bytes that no input's binary_data_size accounts for"
        )
    parameters = _field(doc, "parameters", dict, "", {})
    binary_out = {"": bool(parameters.get("binary_data_output", False))}
    names = []
    for i, item in enumerate(_field(doc, "outputs", list, "", [])):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInputError(f"outputs[{i}] must be a JSON object with a `name`")
        names.append(item["name"])
        flag = _field(_field(item, "parameters", dict, f"outputs[{i}]: ", {}), "binary_data", bool, f"outputs[{i}]: ")
        binary_out[item["name"]] = binary_out[""] if flag is None else flag
    for key, value in parameters.items():
        if isinstance(value, (dict, list)):
            raise InvalidInputError(f"parameter `{shown(key)}` must be a string, number or boolean")
    call = InferCall(model, version, inputs, parameters, names, _field(doc, "id", str, "", ""))
    return call, binary_out


def _timeout(parameters: dict) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds) in seconds, or None."""
    value = parameters.get("timeout")
    return value / 1e6 if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


# --------------------------------------------------------------------------- the response


def _json_data(tensor: OutputTensor) -> list:
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in tensor.array.ravel()]
    return tensor.array.ravel().tolist()


def encode_response(call: InferCall, config: ModelConfig, outputs: list[OutputTensor], binary: dict) -> Response:
    """The outputs as the protocol's JSON, binary ones after it (binary tensor data extension)."""
    parts, items = [], []
    for tensor in outputs:
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.array.shape)}
        if binary.get(tensor.name, binary[""]):
            parts.append(tensor.binary())
            item["parameters"] = {"binary_data_size": len(parts[-1])}
        else:
            item["data"] = _json_data(tensor)
        items.append(item)
    doc = {"model_name": config.name, "model_version": config.version, "outputs": items}
    if call.id:
        doc["id"] = call.id
    head = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
    if not parts:
        return Response(head, media_type="application/json")
    return Response(
        b"".join([head, *parts]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def _tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


# --------------------------------------------------------------------------- the routes


def kserve_router(plane: KServe, serving: Callable[[], bool]) -> APIRouter:
    """The ``/v2`` routes over ``plane``; ``serving()`` says whether the server takes work (False
    while it starts or drains: ready answers 503)."""
    router = APIRouter(prefix="/v2", tags=["KServe v2 (Open Inference Protocol)"])
    limits = plane.pipeline.limits

    @router.get("", summary="server metadata")
    async def server_metadata() -> dict:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}

    @router.get("/health/live", summary="200 while the process answers")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready", summary="200 once every model is loaded and warm, 503 before and while draining")
    async def ready() -> JSONResponse:
        up = serving() and plane.server_ready()
        return JSONResponse({"ready": up}, status_code=200 if up else 503)

    async def model_metadata(name: str, version: str = "") -> dict:
        meta = plane.metadata(name, version)
        return {
            "name": meta.config.name,
            "versions": [meta.config.version],
            "platform": PLATFORM,
            "inputs": _tensors(meta.inputs),
            "outputs": _tensors(meta.outputs),
        }

    async def model_ready(name: str, version: str = "") -> JSONResponse:
        if not plane.model_ready(name, version):
            plane.find(name, version)  # unknown: 404 naming the served ones; loading: 503
            raise UnavailableError(f"model {shown(name)} is not ready yet; retry shortly")
        return JSONResponse({"name": name, "ready": True})

    async def model_config(name: str, version: str = "") -> dict:
        return MessageToDict(plane.model_config(name, version), preserving_proto_field_name=True)

    async def infer(request: Request, name: str, version: str = "") -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in _BODY_TYPES or request.headers.get("content-encoding", "identity") != "identity":
            raise UnsupportedMediaTypeError(
                f"an inference request is JSON (Content-Type: application/json), or JSON then binary tensors "
                f"(application/octet-stream, with Inference-Header-Content-Length), uncompressed; got "
                f"{shown(kind or '(none)')} {shown(request.headers.get('content-encoding', ''))}".rstrip()
            )
        body = await request.body()
        call, binary = read_request(name, version, body, request.headers.get(HEADER_LENGTH))
        return await plane.infer(
            call,
            deadline(limits, _timeout(dict(call.parameters))),
            lambda config, outputs: encode_response(call, config, outputs, binary),
        )

    for prefix in ("/models/{name}", "/models/{name}/versions/{version}"):
        router.add_api_route(prefix, model_metadata, methods=["GET"], summary="model metadata")
        router.add_api_route(prefix + "/ready", model_ready, methods=["GET"], summary="200 when the model is ready")
        router.add_api_route(prefix + "/config", model_config, methods=["GET"], summary="Triton model config")
        router.add_api_route(
            prefix + "/infer",
            infer,
            methods=["POST"],
            summary="inference (JSON tensors, or the binary tensor data extension)",
            response_class=Response,
        )

    @router.post("/repository/index", summary="every served model and its state")
    async def repository_index(request: Request) -> list:
        body = await request.body()
        only_ready = False
        if body.strip():
            doc, _ = _header(body, None)
            only_ready = bool(doc.get("ready", False))
        return [
            {"name": i.name, "version": i.version, "state": "READY" if i.ready else "LOADING"}
            for i in plane.models()
            if i.ready or not only_ready
        ]

    return router
