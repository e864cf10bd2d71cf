"""The KServe v2 path's per-task adapters: input tensors -> the task's batch items, results -> output tensors.

Each adapter reuses its task's own pieces (the TaskRuntime item types DetectItem, SegmentItem,
CaptionItem, GenerateItem, their option checks, the shared Decoder); services/kserve.py runs the
RPCs, (de)serialises tensors and submits the items for every task alike.

Image tasks (detection, segmentation, captioning) take exactly one of
    IMAGE   BYTES [B]           encoded JPEG/PNG/WebP/BMP/TIFF files, one element per image
    PIXELS  UINT8 [B, H, W, C]  raw pixels, C = 1 (gray), 3 (RGB) or 4 (RGBA)
and answer with a batch dimension B on every output, plus IMAGE_SIZE INT32 [B, 2] (height, width).
Generation takes SEED INT64/UINT64 [1] (with the ``count`` parameter) or LATENT FP32 [N, nz].
"""

from __future__ import annotations

import asyncio
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from models.captioning import Caption, CaptionSettings, image_input
from models.checkpoints import ModelConfig
from models.detection import Detection, DetectOptions
from models.errors import InvalidInputError, shown
from models.generation import LatentPrior
from models.preprocessing import to_tensor
from models.registry import Registry
from models.segmentation import LargeImageMode, Segmentation, SegmentOptions
from services.captioning import CaptionItem, max_length_of, vocabulary_of
from services.detection import DetectItem
from services.generation import GenerateItem, MAX_IMAGES, generate_latents
from services.imaging import Decoder
from services.pb import common_pb2, generation_pb2
from services.segmentation import SegmentItem

LABEL_MAP_PAD = 255  # label-map pixels outside an image smaller than the largest of its request


@dataclass(frozen=True)
class TensorSpec:
    """An input or output tensor: KServe datatypes (the first is the advertised one) and the
    full shape, batch dimension included (-1 = any size)."""

    name: str
    datatypes: tuple[str, ...]
    shape: tuple[int, ...]
    optional: bool = False

    @property
    def datatype(self) -> str:
        return self.datatypes[0]


# Request parameters that Triton and its clients reserve; accepted and ignored here.
_RESERVED = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers",
                       "binary_data_output"})


class Params:
    """The request's ``parameters`` map (``InferParameter`` values), read by name and kind.

    An unknown name is refused (a typo would otherwise silently keep the default)."""

    def __init__(self, parameters: Mapping[str, Any], known: Sequence[str]) -> None:
        self._values: dict[str, Any] = {}
        for key, param in parameters.items():
            if key in _RESERVED or key.startswith("triton_"):
                continue
            if key not in known:
                raise InvalidInputError(f"unknown parameter `{shown(key)}`; this model takes {sorted(known)}")
            kind = param.WhichOneof("parameter_choice")
            if kind is not None:
                self._values[key] = getattr(param, kind)

    def _get(self, name: str, kinds: tuple[type, ...], what: str) -> Any:
        value = self._values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            shown_value = shown(value) if isinstance(value, str) else value
            raise InvalidInputError(f"parameter `{name}` must be {what}, got {shown_value!r}")
        return value

    def number(self, name: str, default: float) -> float:
        value = self._get(name, (int, float), "a number (double_param or int64_param)")
        return default if value is None else float(value)

    def integer(self, name: str, default: int | None) -> int | None:
        value = self._get(name, (int,), "an integer (int64_param)")
        return default if value is None else int(value)

    def text(self, name: str, default: str) -> str:
        value = self._get(name, (str,), "a string (string_param)")
        return default if value is None else value


@dataclass
class Job:
    """One request as the items to submit, plus what ``collect`` needs besides their results."""

    items: list[Any]
    state: Any = None


class Adapter(ABC):
    """How one task's models look on the KServe path."""

    task: ClassVar[str]
    parameters: ClassVar[tuple[str, ...]]  # the request parameters this task reads
    batched: ClassVar[bool]  # dim 0 of every input and output is the request's batch (<= max_batch_size)

    @abstractmethod
    def inputs(self, config: ModelConfig) -> list[TensorSpec]: ...

    @abstractmethod
    def pixels(self, config: ModelConfig, tensors: dict[str, np.ndarray], params: Params, decoder: Decoder) -> int:
        """The pixels the request will hold once decoded or generated (admission control), read
        from headers and shapes only."""

    @abstractmethod
    def outputs(self, config: ModelConfig) -> list[TensorSpec]: ...

    @abstractmethod
    async def prepare(self, config: ModelConfig, tensors: dict[str, np.ndarray], params: Params,
                      decoder: Decoder) -> Job:
        """Validated input arrays (by name) -> the task's batch items. Raises InvalidInputError."""

    @abstractmethod
    def collect(self, config: ModelConfig, job: Job, values: list[Any]) -> dict[str, np.ndarray]:
        """The items' results, in order -> output arrays by name (CPU work: runs in the decode pool)."""


# --------------------------------------------------------------------------- image tasks

_IMAGE_INPUTS = [TensorSpec("IMAGE", ("BYTES",), (-1,), optional=True),
                 TensorSpec("PIXELS", ("UINT8",), (-1, -1, -1, -1), optional=True)]
_IMAGE_SIZE = TensorSpec("IMAGE_SIZE", ("INT32",), (-1, 2))


def _image_protos(tensors: dict[str, np.ndarray]) -> tuple[str, list[common_pb2.Image]]:
    if ("IMAGE" in tensors) == ("PIXELS" in tensors):
        raise InvalidInputError("give exactly one image input: IMAGE (BYTES [B], encoded JPEG/PNG/WebP/BMP/TIFF "
                                "files) or PIXELS (UINT8 [B, H, W, C], C = 1, 3 or 4)")
    if "IMAGE" in tensors:
        return "IMAGE", [common_pb2.Image(encoded=bytes(data)) for data in tensors["IMAGE"]]
    pixels = tensors["PIXELS"]  # (B, H, W, C)
    _, height, width, channels = pixels.shape
    return "PIXELS", [common_pb2.Image(raw=common_pb2.RawImage(data=p.tobytes(), height=height, width=width,
                                                               channels=channels)) for p in pixels]


async def _decode(decoder: Decoder, image: common_pb2.Image, then: Callable, where: str) -> tuple[np.ndarray, Any]:
    try:
        return await decoder.decode(image, then)
    except InvalidInputError as exc:  # say which image of the batch was bad
        raise type(exc)(f"{where}: {exc}") from exc


class ImageAdapter(Adapter):
    """Decode every image of the request with the shared Decoder; one batch item per image."""

    batched = True

    def inputs(self, config: ModelConfig) -> list[TensorSpec]:
        return list(_IMAGE_INPUTS)

    def pixels(self, config: ModelConfig, tensors: dict[str, np.ndarray], params: Params, decoder: Decoder) -> int:
        if "PIXELS" in tensors:
            return math.prod(tensors["PIXELS"].shape[:3])
        return sum(decoder.pixels(common_pb2.Image(encoded=bytes(data))) for data in tensors.get("IMAGE", ()))

    def outputs(self, config: ModelConfig) -> list[TensorSpec]:
        return [*self.task_outputs(config), _IMAGE_SIZE]

    @abstractmethod
    def task_outputs(self, config: ModelConfig) -> list[TensorSpec]: ...

    @abstractmethod
    def model_input(self, config: ModelConfig) -> Callable[[np.ndarray], torch.Tensor]:
        """RGB uint8 (H, W, 3) -> the tensor the task's item holds (the typed RPC's transform)."""

    @abstractmethod
    def options(self, config: ModelConfig, params: Params) -> Any: ...

    @abstractmethod
    def item(self, tensor: torch.Tensor, options: Any) -> Any: ...

    @abstractmethod
    def tensors(self, config: ModelConfig, options: Any, values: list[Any]) -> dict[str, np.ndarray]: ...

    async def prepare(self, config: ModelConfig, tensors: dict[str, np.ndarray], params: Params,
                      decoder: Decoder) -> Job:
        options = self.options(config, params)  # bad options fail before any decoding
        name, images = _image_protos(tensors)
        then = self.model_input(config)
        decoded = await asyncio.gather(*(_decode(decoder, image, then, f"{name}[{i}]")
                                         for i, image in enumerate(images)))
        sizes = np.array([array.shape[:2] for array, _ in decoded], np.int32).reshape(-1, 2)
        return Job([self.item(tensor, options) for _, tensor in decoded], (options, sizes))

    def collect(self, config: ModelConfig, job: Job, values: list[Any]) -> dict[str, np.ndarray]:
        options, sizes = job.state
        return {**self.tensors(config, options, values), "IMAGE_SIZE": sizes}


class DetectionAdapter(ImageAdapter):
    """BOXES FP32 [B, N, 4] (x_min, y_min, x_max, y_max in input pixels), SCORES FP32 [B, N],
    LABELS INT64 [B, N] (the model's label ids, 1-based: class i is classes[i - 1]), CLASS_NAMES
    BYTES [B, N], COUNT INT32 [B]. N is the largest count of the request; image b's detections
    are the first COUNT[b] rows (by descending score), the rest are zeros, label 0 and b""."""

    task = "detection"
    parameters = ("score_threshold", "max_detections", "class_filter")

    def task_outputs(self, config: ModelConfig) -> list[TensorSpec]:
        return [TensorSpec("BOXES", ("FP32",), (-1, -1, 4)), TensorSpec("SCORES", ("FP32",), (-1, -1)),
                TensorSpec("LABELS", ("INT64",), (-1, -1)), TensorSpec("CLASS_NAMES", ("BYTES",), (-1, -1)),
                TensorSpec("COUNT", ("INT32",), (-1,))]

    def model_input(self, config: ModelConfig) -> Callable[[np.ndarray], torch.Tensor]:
        return to_tensor

    def options(self, config: ModelConfig, params: Params) -> DetectOptions:
        d = DetectOptions()
        wanted = params.text("class_filter", "")  # comma-separated class names
        options = DetectOptions(score_threshold=params.number("score_threshold", d.score_threshold),
                                max_detections=params.integer("max_detections", d.max_detections),
                                class_filter=tuple(n.strip() for n in wanted.split(",") if n.strip()))
        options.check_classes(config.classes)
        return options

    def item(self, tensor: torch.Tensor, options: DetectOptions) -> DetectItem:
        return DetectItem(tensor, options)

    def tensors(self, config: ModelConfig, options: DetectOptions,
                values: list[list[Detection]]) -> dict[str, np.ndarray]:
        batch, most = len(values), max((len(v) for v in values), default=0)
        boxes, scores = np.zeros((batch, most, 4), np.float32), np.zeros((batch, most), np.float32)
        labels, names = np.zeros((batch, most), np.int64), np.full((batch, most), b"", dtype=object)
        for b, detections in enumerate(values):
            for n, d in enumerate(detections):
                boxes[b, n], scores[b, n], labels[b, n], names[b, n] = d.box, d.score, d.label, d.class_name.encode()
        return {"BOXES": boxes, "SCORES": scores, "LABELS": labels, "CLASS_NAMES": names,
                "COUNT": np.array([len(v) for v in values], np.int32)}


class SegmentationAdapter(ImageAdapter):
    """LABEL_MAP UINT8 [B, H, W] (class index per pixel, at the input's size). Images of one
    request may differ in size: H, W are the largest, the rest is LABEL_MAP_PAD (255);
    IMAGE_SIZE says each image's own size."""

    task = "segmentation"
    parameters = ("max_side", "large_image_mode", "tile_overlap")

    def task_outputs(self, config: ModelConfig) -> list[TensorSpec]:
        return [TensorSpec("LABEL_MAP", ("UINT8",), (-1, -1, -1))]

    def model_input(self, config: ModelConfig) -> Callable[[np.ndarray], torch.Tensor]:
        return to_tensor

    def options(self, config: ModelConfig, params: Params) -> SegmentOptions:
        mode = params.text("large_image_mode", LargeImageMode.RESIZE.value).lower()
        if mode not in {m.value for m in LargeImageMode}:
            raise InvalidInputError(f"large_image_mode must be `resize` or `tile`, got `{shown(mode)}`")
        return SegmentOptions(max_side=params.integer("max_side", SegmentOptions.max_side),
                              large_image_mode=LargeImageMode(mode),
                              tile_overlap=params.integer("tile_overlap", None))

    def item(self, tensor: torch.Tensor, options: SegmentOptions) -> SegmentItem:
        return SegmentItem(tensor, options)

    def tensors(self, config: ModelConfig, options: SegmentOptions,
                values: list[Segmentation]) -> dict[str, np.ndarray]:
        height, width = (max(v.labels.shape[i] for v in values) for i in (0, 1))
        label_map = np.full((len(values), height, width), LABEL_MAP_PAD, np.uint8)
        for b, seg in enumerate(values):
            label_map[b, :seg.labels.shape[0], :seg.labels.shape[1]] = seg.labels
        return {"LABEL_MAP": label_map}


class CaptioningAdapter(ImageAdapter):
    """CAPTION BYTES [B, K] (UTF-8 text), LOG_PROB FP32 [B, K] (natural log, <end> included),
    SCORE FP32 [B, K] (the ranking value): the K = num_captions best beams, best first."""

    task = "captioning"
    parameters = ("beam_size", "max_length", "num_captions", "length_penalty")

    def task_outputs(self, config: ModelConfig) -> list[TensorSpec]:
        return [TensorSpec("CAPTION", ("BYTES",), (-1, -1)), TensorSpec("LOG_PROB", ("FP32",), (-1, -1)),
                TensorSpec("SCORE", ("FP32",), (-1, -1))]

    def model_input(self, config: ModelConfig) -> Callable[[np.ndarray], torch.Tensor]:
        return functools.partial(image_input, size=config.input_size or 224)

    def options(self, config: ModelConfig, params: Params) -> CaptionSettings:
        d = CaptionSettings()
        return CaptionSettings(beam_size=params.integer("beam_size", d.beam_size),
                               max_length=params.integer("max_length", max_length_of(config)),
                               num_captions=params.integer("num_captions", d.num_captions),
                               length_penalty=params.number("length_penalty", d.length_penalty)).check()

    def item(self, tensor: torch.Tensor, options: CaptionSettings) -> CaptionItem:
        return CaptionItem(tensor, options)

    def tensors(self, config: ModelConfig, options: CaptionSettings,
                values: list[list[Caption]]) -> dict[str, np.ndarray]:
        vocab, shape = vocabulary_of(config), (len(values), options.num_captions)
        text, log_prob, score = np.full(shape, b"", dtype=object), *(np.zeros(shape, np.float32) for _ in range(2))
        for b, captions in enumerate(values):
            for k, c in enumerate(captions[:options.num_captions]):
                text[b, k], log_prob[b, k], score[b, k] = vocab.decode(c.tokens).encode(), c.log_prob, c.score
        return {"CAPTION": text, "LOG_PROB": log_prob, "SCORE": score}


# --------------------------------------------------------------------------- generation


class GenerationAdapter(Adapter):
    """SEED INT64/UINT64 [1] (>= 0) with parameter ``count`` (1..64, default 1), or LATENT FP32
    [N, nz] (N in 1..64) -> IMAGE UINT8 [N, H, W, C] and the LATENT FP32 [N, nz] used. The same
    images as the typed Generate for the same seed and count (one forward pass per request)."""

    task = "generation"
    parameters = ("count",)
    batched = False

    def inputs(self, config: ModelConfig) -> list[TensorSpec]:
        nz = int(config.model_args.get("nz", 100))
        return [TensorSpec("SEED", ("INT64", "UINT64"), (1,), optional=True),
                TensorSpec("LATENT", ("FP32",), (-1, nz), optional=True)]

    def outputs(self, config: ModelConfig) -> list[TensorSpec]:
        size, channels = (int(config.model_args.get(k, d)) for k, d in (("image_size", 64), ("channels", 3)))
        return [TensorSpec("IMAGE", ("UINT8",), (-1, size, size, channels)),
                TensorSpec("LATENT", ("FP32",), (-1, int(config.model_args.get("nz", 100))))]

    def pixels(self, config: ModelConfig, tensors: dict[str, np.ndarray], params: Params, decoder: Decoder) -> int:
        count = len(tensors["LATENT"]) if "LATENT" in tensors else params.integer("count", None) or 1
        side = int(config.model_args.get("image_size", 64))
        return max(0, min(count, MAX_IMAGES)) * side * side

    async def prepare(self, config: ModelConfig, tensors: dict[str, np.ndarray], params: Params,
                      decoder: Decoder) -> Job:
        if ("SEED" in tensors) == ("LATENT" in tensors):
            raise InvalidInputError("give exactly one input: SEED (INT64 [1], with the `count` parameter) or "
                                    "LATENT (FP32 [N, nz], one image per row)")
        count = params.integer("count", None)
        if "LATENT" in tensors:
            if count is not None:
                raise InvalidInputError("the `count` parameter goes with SEED; with LATENT, N (its rows) is the count")
            request = generation_pb2.GenerateRequest(
                latents=[generation_pb2.Latent(values=row.tolist()) for row in tensors["LATENT"]])
        else:
            seed = int(tensors["SEED"][0])
            if seed < 0:
                raise InvalidInputError(f"SEED must be >= 0 (a uint64 seed), got {seed}")
            if count is not None and not 1 <= count <= MAX_IMAGES:
                raise InvalidInputError(f"count must be in 1..{MAX_IMAGES}, got {count}; make several calls for more")
            request = generation_pb2.GenerateRequest(seed=seed, count=count or 1)
        z = generate_latents(request, LatentPrior.of(config.model_args))  # the typed RPC's checks
        return Job([GenerateItem(z)], z)

    def collect(self, config: ModelConfig, job: Job, values: list[Any]) -> dict[str, np.ndarray]:
        return {"IMAGE": values[0], "LATENT": job.state.numpy()}


ADAPTERS: Registry[Callable[[], Adapter]] = Registry("KServe task adapter")
for _adapter in (DetectionAdapter, SegmentationAdapter, CaptioningAdapter, GenerationAdapter):
    ADAPTERS.register(_adapter.task)(_adapter)
