"""Python client for cvtasks servers (sync gRPC channel).

with CvtasksClient("localhost:50051") as client:
    response = client.detect(open("cat.jpg", "rb").read(), score_threshold=0.3)
    for d in response.detections: print(d.class_name, d.score, d.box)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from models.options import CaptionOptions, ClassifyOptions, DetectOptions, SegmentOptions
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


def detect_request(
    image: ImageLike, *, model: str = "", request_id: str = "", **options: Any
) -> detection_pb2.DetectRequest:
    """Options (models.options.DetectOptions: score_threshold, max_detections, classes) left out or
    None take the server's defaults."""
    message = options_to_proto(DetectOptions, detection_pb2.DetectOptions(), options)
    return detection_pb2.DetectRequest(
        model=common_pb2.ModelRef(name=model), image=image_proto(image), options=message, request_id=request_id
    )


def segment_request(
    image: ImageLike, *, model: str = "", request_id: str = "", **options: Any
) -> segmentation_pb2.SegmentRequest:
    """Options (models.options.SegmentOptions: contours, overlay, large_image_mode, max_side,
    tile_overlap, overlay_alpha) left out or None take the server's defaults."""
    message = options_to_proto(SegmentOptions, segmentation_pb2.SegmentOptions(), options)
    return segmentation_pb2.SegmentRequest(
        model=common_pb2.ModelRef(name=model), image=image_proto(image), options=message, request_id=request_id
    )


def caption_request(
    image: ImageLike, *, model: str = "", request_id: str = "", **options: Any
) -> captioning_pb2.CaptionRequest:
    """Options (models.options.CaptionOptions: beam_size, max_length, num_captions,
    length_penalty) left out or None take the server's defaults (beam 3, the model's max_length,
    1 caption)."""
    message = options_to_proto(CaptionOptions, captioning_pb2.CaptionOptions(), options)
    return captioning_pb2.CaptionRequest(
        model=common_pb2.ModelRef(name=model), image=image_proto(image), options=message, request_id=request_id
    )


def classify_request(
    image: ImageLike, *, model: str = "", request_id: str = "", **options: Any
) -> classification_pb2.ClassifyRequest:
    """Options (models.options.ClassifyOptions: top_k, min_probability, threshold, explain) left out
    or None take the server's defaults (top 5, every probability; multi-label models: every label
    >= 0.5; no explanation)."""
    message = options_to_proto(ClassifyOptions, classification_pb2.ClassifyOptions(), options)
    return classification_pb2.ClassifyRequest(
        model=common_pb2.ModelRef(name=model), image=image_proto(image), options=message, request_id=request_id
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

    def detect(self, image: ImageLike, *, timeout: float | None = None, **options: Any) -> detection_pb2.DetectResponse:
        """Detect objects in one image (options: model, score_threshold, max_detections, classes, request_id)."""
        return self.detection.Detect(detect_request(image, **options), **self._call_args(timeout))

    def detect_stream(
        self, images: Iterable[ImageLike], *, timeout: float | None = None, **options: Any
    ) -> Iterator[detection_pb2.DetectResponse]:
        """Stream many images; responses come in order, request_id = the image's index as text.
        ``timeout`` bounds the whole stream (default: none)."""
        requests = (detect_request(img, request_id=str(i), **options) for i, img in enumerate(images))
        return self.detection.DetectStream(requests, timeout=timeout, metadata=self.metadata or None)

    def segment(
        self, image: ImageLike, *, timeout: float | None = None, **options: Any
    ) -> segmentation_pb2.SegmentResponse:
        """Segment one image (options: model, contours, overlay, large_image_mode, max_side, tile_overlap,
        overlay_alpha, request_id). The label map is ``response.label_map_png``."""
        return self.segmentation.Segment(segment_request(image, **options), **self._call_args(timeout))

    def segment_stream(
        self, images: Iterable[ImageLike], *, timeout: float | None = None, **options: Any
    ) -> Iterator[segmentation_pb2.SegmentResponse]:
        requests = (segment_request(img, request_id=str(i), **options) for i, img in enumerate(images))
        return self.segmentation.SegmentStream(requests, timeout=timeout, metadata=self.metadata or None)

    def caption(
        self, image: ImageLike, *, timeout: float | None = None, **options: Any
    ) -> captioning_pb2.CaptionResponse:
        """Caption one image (options: model, beam_size, max_length, num_captions, length_penalty,
        request_id). The best caption is ``response.captions[0].text``."""
        return self.captioning.Caption(caption_request(image, **options), **self._call_args(timeout))

    def caption_stream(
        self, images: Iterable[ImageLike], *, timeout: float | None = None, **options: Any
    ) -> Iterator[captioning_pb2.CaptionResponse]:
        requests = (caption_request(img, request_id=str(i), **options) for i, img in enumerate(images))
        return self.captioning.CaptionStream(requests, timeout=timeout, metadata=self.metadata or None)

    def classify(
        self, image: ImageLike, *, timeout: float | None = None, **options: Any
    ) -> classification_pb2.ClassifyResponse:
        """Classify one image (options: model, top_k, min_probability, threshold, explain,
        request_id). The most probable class is ``response.classes[0]`` (label, class_name,
        probability); with ``explain=True`` also ``response.explanation_png`` (the Grad-CAM overlay)
        and ``response.heatmap_png`` (the map)."""
        return self.classification.Classify(classify_request(image, **options), **self._call_args(timeout))

    def classify_stream(
        self, images: Iterable[ImageLike], *, timeout: float | None = None, **options: Any
    ) -> Iterator[classification_pb2.ClassifyResponse]:
        requests = (classify_request(img, request_id=str(i), **options) for i, img in enumerate(images))
        return self.classification.ClassifyStream(requests, timeout=timeout, metadata=self.metadata or None)

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
