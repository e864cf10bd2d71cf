"""Python client for cvtasks servers (sync gRPC channel).

with CvtasksClient("localhost:50051") as client:
    response = client.detect(open("cat.jpg", "rb").read(), score_threshold=0.3)
    for d in response.detections: print(d.class_name, d.score, d.box)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from models.options import CaptionOptions, ClassifyOptions, DetectOptions, Options, SegmentOptions
from services.pb import (
    captioning_pb2,
    captioning_pb2_grpc,
    classification_pb2,
    classification_pb2_grpc,
    common_pb2,
    detection_pb2,
    detection_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)
from services.proto_options import options_to_proto

if TYPE_CHECKING:
    from models.detection import Detection

MiB = 1024 * 1024
ImageLike = bytes | bytearray | memoryview | np.ndarray


def image_proto(image: ImageLike) -> common_pb2.Image:
    """Encoded file bytes as they are, or an RGB/gray uint8 array (H, W[, C]) as raw pixels."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"arrays must be uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}")
        pixels = np.ascontiguousarray(image if image.ndim == 3 else image[..., None])
        height, width, channels = pixels.shape
        return common_pb2.Image(
            raw=common_pb2.RawImage(data=pixels.tobytes(), height=height, width=width, channels=channels)
        )
    return common_pb2.Image(encoded=bytes(image))


def image_request(request: type[Message], message: type[Message], options: type[Options], doc: str) -> Callable:
    """A request builder ``build(image, *, model="", request_id="", **options)`` for a one-image RPC:
    ``options`` (the fields of ``options``, a models.options class) go into its ``message``."""

    def build(image: ImageLike, *, model: str = "", request_id: str = "", **given: Any) -> Message:
        carried = options_to_proto(options, message(), given)
        return request(
            model=common_pb2.ModelRef(name=model), image=image_proto(image), options=carried, request_id=request_id
        )

    build.__doc__ = doc
    return build


detect_request = image_request(
    detection_pb2.DetectRequest,
    detection_pb2.DetectOptions,
    DetectOptions,
    "Options (models.options.DetectOptions: score_threshold, max_detections, classes) left out or None "
    "take the server's defaults.",
)
segment_request = image_request(
    segmentation_pb2.SegmentRequest,
    segmentation_pb2.SegmentOptions,
    SegmentOptions,
    "Options (models.options.SegmentOptions: contours, overlay, large_image_mode, max_side, tile_overlap, "
    "overlay_alpha) left out or None take the server's defaults.",
)
caption_request = image_request(
    captioning_pb2.CaptionRequest,
    captioning_pb2.CaptionOptions,
    CaptionOptions,
    "Options (models.options.CaptionOptions: beam_size, max_length, num_captions, length_penalty) left out "
    "or None take the server's defaults (beam 3, the model's max_length, 1 caption).",
)
classify_request = image_request(
    classification_pb2.ClassifyRequest,
    classification_pb2.ClassifyOptions,
    ClassifyOptions,
    "Options (models.options.ClassifyOptions: top_k, min_probability, threshold, explain) left out or None "
    "take the server's defaults (top 5, every probability; multi-label models: every label >= 0.5; no "
    "explanation).",
)


_FORMATS = {"png": generation_pb2.IMAGE_FORMAT_PNG, "raw": generation_pb2.IMAGE_FORMAT_RAW}
_PATHS = {"linear": generation_pb2.INTERPOLATION_LINEAR, "spherical": generation_pb2.INTERPOLATION_SPHERICAL}


def _latent(values: Sequence[float]) -> generation_pb2.Latent:
    return generation_pb2.Latent(values=[float(v) for v in values])


def detections_from_proto(response: detection_pb2.DetectResponse) -> list[Detection]:
    """A DetectResponse's detections as models.detection.Detection (boxes x1, y1, x2, y2 in pixels)."""
    from models.detection import Detection  # torchvision: not loaded by clients that never call this

    return [
        Detection(
            box=(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max),
            score=d.score,
            label=d.label,
            class_name=d.class_name,
        )
        for d in response.detections
    ]


def processing_name(value: int) -> str:
    """A SegmentResponse's ``processing`` as "whole" / "resized" / "tiled" ("unspecified", "?")."""
    try:
        return segmentation_pb2.Processing.Name(value).removeprefix("PROCESSING_").lower()
    except ValueError:
        return "?"


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _unary(service: str, rpc: str, request: Callable[..., Message], doc: str) -> Callable[..., Message]:
    """A client method calling ``rpc`` of the ``service`` stub with one image's request."""

    def call(self: CvtasksClient, image: ImageLike, *, timeout: float | None = None, **options: Any) -> Message:
        return getattr(getattr(self, service), rpc)(request(image, **options), **self._call_args(timeout))

    call.__doc__ = doc
    return call


def _stream(service: str, rpc: str, request: Callable[..., Message]) -> Callable[..., Iterator[Message]]:
    """A client method streaming many images through ``rpc``: responses in order, request_id =
    the image's index as text; ``timeout`` bounds the whole stream (default: none)."""

    def call(
        self: CvtasksClient, images: Iterable[ImageLike], *, timeout: float | None = None, **options: Any
    ) -> Iterator[Message]:
        requests = (request(img, request_id=str(i), **options) for i, img in enumerate(images))
        return getattr(getattr(self, service), rpc)(requests, timeout=timeout, metadata=self.metadata or None)

    call.__doc__ = (
        "Stream many images; responses come in order, request_id = the image's index as text. "
        "``timeout`` bounds the whole stream (default: none)."
    )
    return call


class CvtasksClient:
    """One channel to a cvtasks server. ``timeout`` (seconds) is each call's deadline.

    ``token`` is sent as ``authorization: Bearer <token>`` on every call. ``tls_ca`` (a CA file)
    switches to TLS; ``tls_cert`` + ``tls_key`` add a client certificate (mutual TLS).
    ``CvtasksClient.from_env`` takes them from CVTASKS_TOKEN (or CVTASKS_TOKEN_FILE),
    CVTASKS_TLS_CA, CVTASKS_TLS_CERT and CVTASKS_TLS_KEY.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        max_message_bytes: int = 64 * MiB,
        metadata: Sequence[tuple[str, str]] | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        token: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self.target, self.timeout, self.metadata = target, timeout, list(metadata or [])
        if token:
            self.metadata.append(("authorization", f"Bearer {token}"))
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *channel_options,
        ]
        if tls_ca or tls_cert:
            credentials = grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.detection = detection_pb2_grpc.DetectionServiceStub(self.channel)
        self.segmentation = segmentation_pb2_grpc.SegmentationServiceStub(self.channel)
        self.captioning = captioning_pb2_grpc.CaptioningServiceStub(self.channel)
        self.generation = generation_pb2_grpc.GenerationServiceStub(self.channel)
        self.classification = classification_pb2_grpc.ClassificationServiceStub(self.channel)
        self.models = models_pb2_grpc.ModelServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def _call_args(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self.metadata or None}

    # one image per call, and a stream of images (responses in order, request_id = the image's
    # index as text, ``timeout`` bounding the whole stream: default none)
    detect = _unary(
        "detection",
        "Detect",
        detect_request,
        "Detect objects in one image (options: model, score_threshold, max_detections, classes, request_id).",
    )
    detect_stream = _stream("detection", "DetectStream", detect_request)
    segment = _unary(
        "segmentation",
        "Segment",
        segment_request,
        "Segment one image (options: model, contours, overlay, "
        "large_image_mode, max_side, tile_overlap, overlay_alpha, request_id). The label map is "
        "``response.label_map_png``.",
    )
    segment_stream = _stream("segmentation", "SegmentStream", segment_request)
    caption = _unary(
        "captioning",
        "Caption",
        caption_request,
        "Caption one image (options: model, beam_size, max_length, "
        "num_captions, length_penalty, request_id). The best caption is ``response.captions[0].text``.",
    )
    caption_stream = _stream("captioning", "CaptionStream", caption_request)
    classify = _unary(
        "classification",
        "Classify",
        classify_request,
        "Classify one image (options: model, top_k, min_probability, threshold, explain, request_id). The "
        "most probable class is ``response.classes[0]`` (label, class_name, probability); with "
        "``explain=True`` also ``response.explanation_png`` (the Grad-CAM overlay) and "
        "``response.heatmap_png`` (the map).",
    )
    classify_stream = _stream("classification", "ClassifyStream", classify_request)

    def generate(
        self,
        *,
        count: int = 1,
        seed: int = 0,
        latents: Sequence[Sequence[float]] = (),
        fmt: str = "png",
        model: str = "",
        request_id: str = "",
        timeout: float | None = None,
    ) -> generation_pb2.GenerateResponse:
        """``count`` images from ``seed`` (or one per latent vector). ``fmt``: "png" or "raw"."""
        request = generation_pb2.GenerateRequest(
            model=common_pb2.ModelRef(name=model),
            count=0 if latents else count,
            seed=seed,
            latents=[_latent(v) for v in latents],
            format=_FORMATS[fmt],
            request_id=request_id,
        )
        return self.generation.Generate(request, **self._call_args(timeout))

    def interpolate(
        self,
        start: int | Sequence[float],
        end: int | Sequence[float],
        *,
        steps: int = 8,
        path: str = "spherical",
        fmt: str = "png",
        model: str = "",
        timeout: float | None = None,
    ) -> generation_pb2.GenerateResponse:
        """Images from ``start`` to ``end`` (each a seed or a latent vector), both included."""
        request = generation_pb2.InterpolateRequest(
            model=common_pb2.ModelRef(name=model), steps=steps, interpolation=_PATHS[path], format=_FORMATS[fmt]
        )
        for side, value in (("start", start), ("end", end)):
            if isinstance(value, int):
                setattr(request, f"{side}_seed", value)
            else:
                getattr(request, f"{side}_latent").CopyFrom(_latent(value))
        return self.generation.Interpolate(request, **self._call_args(timeout))

    def list_models(self, task: str = "") -> list[models_pb2.ModelInfo]:
        return list(self.models.ListModels(models_pb2.ListModelsRequest(task=task), **self._call_args(None)).models)

    def get_model(self, name: str = "") -> models_pb2.ModelInfo:
        return self.models.GetModel(models_pb2.GetModelRequest(name=name), **self._call_args(None))

    def health(self, service: str = "") -> str:
        """ "SERVING", "NOT_SERVING", ... for ``service`` ("" = the whole server)."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), **self._call_args(None))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def load_model(
        self, name: str, *, make_default: bool = False, timeout: float | None = None
    ) -> models_pb2.ModelInfo:
        """(Re)load ``name`` from the server's model store (an admin token when tokens are on)."""
        request = models_pb2.LoadModelRequest(name=name, make_default=make_default)
        return self.models.LoadModel(request, **self._call_args(timeout))

    def unload_model(self, name: str, *, timeout: float | None = None) -> models_pb2.UnloadModelResponse:
        return self.models.UnloadModel(models_pb2.UnloadModelRequest(name=name), **self._call_args(timeout))

    @classmethod
    def from_env(cls, target: str, **kwargs: Any) -> CvtasksClient:
        """A client whose token and TLS files come from the environment (see the class docstring)."""
        token = os.environ.get("CVTASKS_TOKEN")
        if not token and os.environ.get("CVTASKS_TOKEN_FILE"):
            token = Path(os.environ["CVTASKS_TOKEN_FILE"]).read_text().strip()
        env = {"tls_ca": "CVTASKS_TLS_CA", "tls_cert": "CVTASKS_TLS_CERT", "tls_key": "CVTASKS_TLS_KEY"}
        found = {key: os.environ[var] for key, var in env.items() if os.environ.get(var)}
        return cls(target, token=token or None, **found, **kwargs)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CvtasksClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
