"""The typed gRPC services (``cvtasks.v1.<Task>Service``) as codecs over the request pipeline.

A task's servicer (services/detection.py, ...) subclasses its generated servicer and
``TypedService``: it maps its request to a ``Call`` (``call``) and an ``Answer`` to its response
(``respond``), and names its RPCs (``unary_rpcs``, ``stream_rpcs``: RPC -> the method that makes
its Call); the RPC methods themselves are made here, and run the request through
services/pipeline.py. Streams answer in request order, with a failed item's
``error`` set and the stream going on (services/streaming.py).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.message import Message

from models.checkpoints import ModelConfig
from models.errors import InvalidInputError
from models.options import TASK_OPTIONS, Options
from services.imaging import ImageData, RawPixels
from services.pb import common_pb2
from services.pipeline import Answer, Call, Pipeline
from services.proto_options import options_from_proto
from services.streaming import deadline_of, ordered_stream

MS = 1000.0


def image_data(image: common_pb2.Image) -> ImageData:
    """``cvtasks.v1.Image`` (encoded bytes or raw pixels) -> what the decoder takes."""
    source = image.WhichOneof("source")
    if source == "encoded":
        return image.encoded
    if source == "raw":
        raw = image.raw
        return RawPixels(raw.data, raw.height, raw.width, raw.channels)
    raise InvalidInputError(
        "the request has no image: set image.encoded (JPEG, PNG, WebP, BMP or TIFF bytes) "
        "or image.raw (uint8 HWC pixels with height, width, channels)"
    )


def model_ref(config: ModelConfig) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=config.name, version=config.version)


def timings_proto(s: Mapping[str, float]) -> common_pb2.Timings:
    """Server-side stage timings (seconds: pipeline.stage_seconds) in milliseconds."""
    return common_pb2.Timings(
        decode_ms=s["preprocess"] * MS,
        queue_ms=s["queue"] * MS,
        inference_ms=s["inference"] * MS,
        postprocess_ms=s["postprocess"] * MS,
        total_ms=s["total"] * MS,
    )


def _unary(builder: str) -> Callable:
    async def rpc(self: TypedService, request: Any, context: grpc.aio.ServicerContext) -> Message:
        return await self.handle(request, deadline_of(context, self.pipeline.limits), getattr(self, builder))

    return rpc


def _stream(builder: str) -> Callable:
    async def rpc(
        self: TypedService, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Message]:
        deadline, call = deadline_of(context), getattr(self, builder)
        async for response in ordered_stream(
            requests, lambda r: self.handle(r, deadline, call), on_error=self.failed, window=self.stream_window
        ):
            yield response

    return rpc


class TypedService(ABC):
    """Base of a task's typed servicer (mixed into its generated ``*ServiceServicer``).

    Unary RPCs run under the server's deadline policy (services/streaming.py ``deadline_of``);
    streams keep the client's deadline and answer in order, a failed item with ``error`` set."""

    task: ClassVar[str]
    unary_rpcs: ClassVar[dict[str, str]] = {}  # RPC name -> the method making its Call
    stream_rpcs: ClassVar[dict[str, str]] = {}
    stream_window: ClassVar[int] = 16  # stream items in flight at once (so the batcher can batch them)
    client_stream: ClassVar[str] = ""  # the client's method for the stream RPC (remote batch jobs)
    http_routes: ClassVar[dict[str, str]] = {}  # POST /v1/models/{name}/<verb> -> the unary RPC it runs
    # The options of an RPC whose request carries no options message (they are its own fields).
    route_options: ClassVar[dict[str, type[Options]]] = {}
    # Set from the generated code (__init_subclass__):
    service_name: ClassVar[str]
    service: ClassVar[Any]  # its ServiceDescriptor
    add_servicer: ClassVar[Callable[[Any, grpc.aio.Server], None]]
    Response: ClassVar[type[Message]]  # what a stream answers a failed item with (``error`` set)
    options_message: ClassVar[type[Message] | None]  # which of a batch job's options its requests carry

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """The RPC methods, and what the generated code already says: the service's name, how to
        add it to a server, its response and options message types."""
        super().__init_subclass__(**kwargs)
        generated = next(b for b in cls.__bases__ if b.__name__.endswith("ServiceServicer"))
        grpc_module = sys.modules[generated.__module__]  # services/pb/<task>_pb2_grpc.py
        service = sys.modules[generated.__module__.removesuffix("_grpc")].DESCRIPTOR.services_by_name[
            generated.__name__.removesuffix("Servicer")
        ]
        cls.service_name, cls.service = service.full_name, service
        cls.add_servicer = staticmethod(getattr(grpc_module, f"add_{generated.__name__}_to_server"))
        method = service.methods_by_name[next(iter(cls.unary_rpcs))]
        cls.Response = message_factory.GetMessageClass(method.output_type)
        options = method.input_type.fields_by_name.get("options")
        cls.options_message = message_factory.GetMessageClass(options.message_type) if options else None
        for rpc, builder in cls.unary_rpcs.items():
            setattr(cls, rpc, _unary(builder))
        for rpc, builder in cls.stream_rpcs.items():
            setattr(cls, rpc, _stream(builder))

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def add_to_server(self, server: grpc.aio.Server) -> None:
        self.add_servicer(self, server)

    def call(self, request: Any) -> Call:
        """The request as the pipeline takes it: its options message (the task's options, by
        name) and its image. A task whose requests are not one image overrides this."""
        return Call(
            options=options_from_proto(TASK_OPTIONS[self.task], request.options), images=[image_data(request.image)]
        )

    @abstractmethod
    def respond(self, request: Any, answer: Answer) -> Message:
        """The response to ``request`` (run in the decode pool)."""

    @staticmethod
    def envelope(request: Any, answer: Answer, *, size: bool = True) -> dict[str, Any]:
        """The fields every response has: the request id, the model, the stage timings and (``size``)
        the image's width and height."""
        fields = {
            "request_id": request.request_id,
            "model": model_ref(answer.config),
            "timings": timings_proto(answer.stage_seconds()),
        }
        if size:
            height, width = answer.images[0].shape[:2]
            fields.update(image_width=width, image_height=height)
        return fields

    @classmethod
    def output_of(cls, response: Any) -> Any:
        """A response back as the task's output (what run_batch returned), for remote batch jobs of
        image tasks (a task's servicer overrides it; a task without images has its own remote path)."""
        raise NotImplementedError(f"remote batch jobs do not read {cls.task} responses back as outputs")

    @abstractmethod
    def picture(self, request: Any, answer: Answer) -> np.ndarray:
        """The answer drawn for people: RGB uint8 (H, W, 3), e.g. the boxes on the image (HTTP's
        ``Accept: image/png``; run in the decode pool)."""

    def failed(self, request: Any, error: common_pb2.ItemError) -> Message:
        return self.Response(request_id=request.request_id, error=error)

    async def handle(
        self,
        request: Any,
        deadline: float | None,
        call: Callable[[Any], Call],
        encode: Callable[[Any, Answer], Any] | None = None,
    ) -> Any:
        """Run ``request`` through the pipeline; the answer is encoded by ``encode`` (default: the
        response message, ``respond``) in the decode pool."""
        loaded = self.pipeline.model(self.task, request.model.name)
        async with self.pipeline.run(loaded, call(request), deadline) as answer:
            return await self.pipeline.encode(encode or self.respond, request, answer)
