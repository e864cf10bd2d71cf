"""The typed HTTP routes for people: ``POST /v1/models/{name}/<verb>`` (detect, segment, caption,
classify, generate, interpolate) and ``GET /v1/models[/{name}]``.

Each route is its typed gRPC servicer's RPC over HTTP (services/typed.py): the HTTP request
becomes the RPC's request message, which runs through the servicer's own Call builder and the
request pipeline, and the answer is the servicer's response as the proto's JSON mapping (field
names as in the .proto, every field printed, 64-bit integers as strings, bytes as base64), so the
JSON is the gRPC answer's field for field. With ``Accept: image/png`` the answer is the
servicer's ``picture`` instead (boxes drawn, the overlay, captions or labels under the image, a
grid of generated images).

- The image: the raw body (``Content-Type: image/png``, ``image/jpeg``, ...,
  ``application/octet-stream``) or a multipart upload's file field ``image``.
- The options: query parameters or (multipart, urlencoded) form fields, one per field of the
  route's Options dataclass (models/options.py) that its request message carries, by the
  field's name (or its flag's name: ``classes`` for ``class_filter``); a list is repeated or
  comma-separated; booleans are true/false/1/0/yes/no. The OpenAPI schema lists them with their
  defaults, bounds and help, from the same declaration.
- The deadline: ``timeout_s`` (a query or form field, seconds), as a gRPC client's deadline: cut
  to the server's ``--max-deadline-s``, ``--default-deadline-s`` when not given; a request still
  queued at its deadline is dropped and answered 504.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from google.protobuf import message_factory
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from starlette.datastructures import UploadFile

from models.errors import InvalidInputError, shown
from models.options import TASK_OPTIONS, Options, base_type, spec_of
from models.preprocessing import encode_image
from services.errors import UnsupportedMediaTypeError
from services.kserve_rest import deadline
from services.models import ModelServicer
from services.pb import common_pb2, models_pb2
from services.proto_options import options_to_proto
from services.typed import TypedService

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff")
TIMEOUT = "timeout_s"  # the request's deadline, not an option of the task
_TIMEOUT_HELP = "the request's deadline in seconds (cut to the server's maximum; default: the server's default)"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_NO_IMAGE = (
    "the request has no image: send the image file as the body (curl --data-binary @photo.jpg "
    "-H 'Content-Type: image/jpeg') or as a multipart upload's `image` field (curl -F image=@photo.jpg)"
)


def to_json(message: Message) -> dict[str, Any]:
    """A response message as the proto's JSON mapping, with the .proto's field names and every field."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


# --------------------------------------------------------------------------- a route


@dataclass(frozen=True)
class Route:
    """``POST /v1/models/{name}/<verb>``: a typed servicer's unary RPC over HTTP."""

    verb: str
    servicer: TypedService
    rpc: str

    @property
    def method(self) -> Any:
        return self.servicer.service.methods_by_name[self.rpc]

    @property
    def request_type(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def takes_image(self) -> bool:
        return "image" in self.method.input_type.fields_by_name

    @property
    def in_options(self) -> bool:
        """Whether the options go in the request's ``options`` message (else in its own fields)."""
        return "options" in self.method.input_type.fields_by_name

    @property
    def options(self) -> type[Options]:
        return self.servicer.route_options.get(self.rpc) or TASK_OPTIONS[self.servicer.task]

    def fields(self) -> list[dataclasses.Field]:
        """The options this route takes: those of its Options that its request message carries."""
        target = self.method.input_type
        if self.in_options:
            target = target.fields_by_name["options"].message_type
        return [f for f in dataclasses.fields(self.options) if f.name in target.fields_by_name]

    def request(self, name: str, image: bytes | None, given: Mapping[str, Any]) -> Message:
        """The RPC's request message: the model, the image and the checked options."""
        checked = self.options.of(given)  # the option's own checks and messages, before anything runs
        values = {f.name: getattr(checked, f.name) for f in self.fields() if getattr(checked, f.name) not in (None, ())}
        message = self.request_type(model=common_pb2.ModelRef(name=name))
        if image is not None:
            message.image.encoded = image
        options_to_proto(self.options, message.options if self.in_options else message, values)
        return message


def _parse(route: Route, raw: Mapping[str, list[str]]) -> dict[str, Any]:
    """Query and form strings -> option values of the route's kinds (names as fields or flags)."""
    fields = {f.name: f for f in route.fields()}
    aliases = {spec_of(f).flag: f.name for f in fields.values() if spec_of(f).flag}
    given: dict[str, Any] = {}
    for key, values in raw.items():
        name = aliases.get(key, key)
        if name not in fields:
            raise InvalidInputError(
                f"unknown option `{shown(key)}`; /v1/models/{{name}}/{route.verb} takes {sorted(fields)}"
            )
        if name in given:
            raise InvalidInputError(f"option `{name}` is given twice (as `{name}` and as its flag name); give it once")
        kind = base_type(fields[name], route.options)
        if kind is tuple:
            given[name] = tuple(v.strip() for value in values for v in value.split(",") if v.strip())
            continue
        if len(values) > 1:
            raise InvalidInputError(f"option `{name}` is given {len(values)} times; give it once")
        given[name] = _value(name, values[0].strip(), kind)
    return given


def _value(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise InvalidInputError(f"option `{name}` must be true or false, got {shown(text)!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise InvalidInputError(f"option `{name}` must be {what}, got {shown(text)!r}") from None
    return text.lower()  # a choice (large_image_mode, interpolation)


async def _read(route: Route, request: Request) -> tuple[bytes | None, dict[str, list[str]]]:
    """The request's image (None for a route without) and its option strings by name."""
    raw: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        raw.setdefault(key, []).append(value)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    image: bytes | None = None
    if route.takes_image and kind == "application/x-www-form-urlencoded":
        raise UnsupportedMediaTypeError(
            "Content-Type application/x-www-form-urlencoded (what curl --data-binary sends unless told) is not "
            "an image; send the image with its type (-H 'Content-Type: image/jpeg') or as a multipart "
            "upload's `image` field (curl -F image=@photo.jpg)"
        )
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=64)
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "image" or not route.takes_image:
                    raise InvalidInputError(
                        f"unexpected file field `{shown(key)}`; "
                        + ("upload the image as the field `image`" if route.takes_image else "this route takes no file")
                    )
                image = await value.read()
            else:
                raw.setdefault(key, []).append(value)
        if route.takes_image and image is None:
            raise InvalidInputError(_NO_IMAGE)
    elif route.takes_image and (kind.startswith("image/") or kind == "application/octet-stream"):
        image = await request.body()
    elif route.takes_image:
        raise UnsupportedMediaTypeError(
            f"Content-Type {shown(kind or '(none)')} is not an image; "
            + _NO_IMAGE.removeprefix("the request has no image: ")
        )
    elif await request.body():
        raise UnsupportedMediaTypeError(
            f"/v1/models/{{name}}/{route.verb} takes no body of type {shown(kind or '(none)')}; give its options "
            "as query parameters (or as form fields)"
        )
    if route.takes_image and not image:
        raise InvalidInputError(_NO_IMAGE.replace("has no image", "has an empty image"))
    return image, raw


def _wants_png(request: Request) -> bool:
    """Whether the client asks for the picture: ``image/png`` before ``application/json`` in Accept."""
    for part in request.headers.get("accept", "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("image/png", "image/*"):
            return True
        if media in ("application/json", "application/*", "*/*"):
            return False
    return False


def _timeout(values: list[str] | None) -> float | None:
    if values is None:
        return None
    if len(values) > 1:
        raise InvalidInputError(f"`{TIMEOUT}` is given {len(values)} times; give it once")
    seconds = _value(TIMEOUT, values[0].strip(), float)
    if not 0 < seconds < float("inf"):
        raise InvalidInputError(f"`{TIMEOUT}` must be a number of seconds > 0, got {shown(values[0])!r}")
    return seconds


async def _run(route: Route, request: Request, name: str) -> Response:
    image, raw = await _read(route, request)
    timeout = _timeout(raw.pop(TIMEOUT, None))
    message = route.request(name, image, _parse(route, raw))
    servicer = route.servicer
    call = getattr(servicer, servicer.unary_rpcs[route.rpc])
    when = deadline(servicer.pipeline.limits, timeout)
    if _wants_png(request):

        def png(req: Message, answer: Any) -> bytes:
            return encode_image(servicer.picture(req, answer), "png")

        return Response(await servicer.handle(message, when, call, png), media_type="image/png")

    def body(req: Message, answer: Any) -> bytes:
        return json.dumps(to_json(servicer.respond(req, answer)), separators=(",", ":")).encode()

    return Response(await servicer.handle(message, when, call, body), media_type="application/json")


# --------------------------------------------------------------------------- OpenAPI


def _schema(field: dataclasses.Field, owner: type[Options]) -> dict[str, Any]:
    spec, kind = spec_of(field), base_type(field, owner)
    types = {bool: "boolean", int: "integer", float: "number", str: "string"}
    schema: dict[str, Any] = (
        {"type": "array", "items": {"type": "string"}} if kind is tuple else {"type": types.get(kind, "string")}
    )
    if spec.low is not None:
        schema["minimum"] = spec.low
    if spec.high is not None and spec.high < 2**53:
        schema["maximum"] = spec.high
    if spec.choices:
        schema["enum"] = list(spec.choices)
    if field.default not in (None, (), dataclasses.MISSING):
        schema["default"] = field.default
    return schema


def _openapi(route: Route) -> dict[str, Any]:
    """The route's parameters and bodies in the OpenAPI schema, from its Options declaration."""
    fields = route.fields()
    parameters = [
        {
            "name": f.name,
            "in": "query",
            "required": False,
            "description": spec_of(f).help,
            "schema": _schema(f, route.options),
        }
        for f in fields
    ]
    timeout = {"type": "number", "exclusiveMinimum": 0}
    parameters.append(
        {"name": TIMEOUT, "in": "query", "required": False, "description": _TIMEOUT_HELP, "schema": timeout}
    )
    binary = {"type": "string", "format": "binary"}
    responses = {
        "200": {
            "description": "the response message as JSON (the proto's JSON mapping), or the picture with "
            "Accept: image/png",
            "content": {"application/json": {"schema": {"type": "object"}}, "image/png": {"schema": binary}},
        }
    }
    extra: dict[str, Any] = {"parameters": parameters, "responses": responses}
    if route.takes_image:
        form = {**{f.name: _schema(f, route.options) for f in fields}, TIMEOUT: timeout}
        extra["requestBody"] = {
            "required": True,
            "content": {
                **{kind: {"schema": binary} for kind in (*IMAGE_TYPES, "application/octet-stream")},
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["image"], "properties": {"image": binary, **form}}
                },
            },
        }
    return extra


# --------------------------------------------------------------------------- the router


def _endpoint(route: Route) -> Any:
    async def endpoint(request: Request, name: str) -> Response:
        return await _run(route, request, name)

    endpoint.__name__ = route.verb
    return endpoint


def typed_router(servicers: Sequence[TypedService], models: ModelServicer) -> APIRouter:
    """``/v1`` over the typed servicers of the served tasks and ModelService."""
    router = APIRouter(prefix="/v1")

    @router.get("/models", tags=["models"], summary="the served models (ModelService.ListModels)")
    async def list_models(task: str = "") -> dict:
        return to_json(await models.ListModels(models_pb2.ListModelsRequest(task=task), None))

    @router.get("/models/{name}", tags=["models"], summary="one served model (ModelService.GetModel)")
    async def get_model(name: str) -> dict:
        return to_json(await models.GetModel(models_pb2.GetModelRequest(name=name), None))

    for servicer in servicers:
        for verb, rpc in servicer.http_routes.items():
            route = Route(verb, servicer, rpc)
            router.add_api_route(
                f"/models/{{name}}/{verb}",
                _endpoint(route),
                methods=["POST"],
                tags=[servicer.task],
                summary=f"{servicer.service_name}/{rpc} over HTTP",
                response_class=Response,
                openapi_extra=_openapi(route),
            )
    return router
