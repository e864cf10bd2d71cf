"""The KServe v2 path's per-task codecs: input tensors + parameters -> a pipeline ``Call``; the
``Answer`` -> output tensors. Transport-free (numpy arrays and plain values): services/kserve.py
is the data plane over them, and services/kserve_grpc.py and services/kserve_rest.py move its
tensors over gRPC and over HTTP.

Image tasks (detection, segmentation, captioning, classification) take exactly one of
    IMAGE   BYTES [B]           encoded JPEG/PNG/WebP/BMP/TIFF files, one element per image
    PIXELS  UINT8 [B, H, W, C]  raw pixels, C = 1 (gray), 3 (RGB) or 4 (RGBA)
and answer with a batch dimension B on every output, plus IMAGE_SIZE INT32 [B, 2] (height, width).
Generation takes SEED INT64/UINT64 [1] (with the ``count`` parameter) or LATENT FP32 [N, nz].
The request parameters are the task's options (models/options.py) of the same names.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from models.checkpoints import ModelConfig
from models.classification import is_multi_label
from models.errors import InvalidInputError, shown
from models.generation import LatentPrior, given_latents
from models.options import TASK_OPTIONS, Options, base_type, spec_of
from services.imaging import RawPixels
from services.pipeline import Answer, Call

LABEL_MAP_PAD = 255  # label-map pixels outside an image smaller than the largest of its request


@dataclass(frozen=True)
class TensorSpec:
    """An input or output tensor: KServe datatypes (the first is the advertised one; one may be
    given as a string) and the full shape, batch dimension included (-1 = any size; default
    [B, K], a row per image)."""

    name: str
    datatypes: tuple[str, ...]
    shape: tuple[int, ...] = (-1, -1)
    optional: bool = False  # an input that may be absent; an output given only when a parameter asks

    def __post_init__(self) -> None:
        if isinstance(self.datatypes, str):
            object.__setattr__(self, "datatypes", (self.datatypes,))

    @property
    def datatype(self) -> str:
        return self.datatypes[0]


# Request parameters that Triton and its clients reserve; accepted and ignored here.
_RESERVED = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers", "binary_data_output"}
)
_KINDS = {
    float: ((int, float), "a number"),
    int: ((int,), "an integer"),
    str: ((str,), "a string"),
    tuple: ((str,), "a comma-separated string"),
    bool: ((bool,), "a boolean"),
}


def kserve_parameters(cls: type[Options]) -> list[str]:
    """The options of ``cls`` a KServe request may set, as its parameters."""
    return [f.name for f in dataclasses.fields(cls) if spec_of(f).kserve]


def options_from_parameters(cls: type[Options], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The request's parameters (name -> a plain value: bool, int, float or str; None: unset), as
    option values, by name and kind. Each transport reads its own wire form into plain values
    (gRPC: the InferParameter's set field; REST: the JSON value). An unknown name is refused (a
    typo would otherwise silently keep the default)."""
    known = {f.name: f for f in dataclasses.fields(cls) if spec_of(f).kserve}
    given: dict[str, Any] = {}
    for key, value in parameters.items():
        if key in _RESERVED or key.startswith("triton_"):
            continue
        if key not in known:
            raise InvalidInputError(f"unknown parameter `{shown(key)}`; this model takes {sorted(known)}")
        if value is None:
            continue
        kind = base_type(known[key], cls)
        types, what = _KINDS[kind]
        if not isinstance(value, types) or (kind is not bool and isinstance(value, bool)):
            raise InvalidInputError(
                f"parameter `{key}` must be {what}, got {repr(shown(value)) if isinstance(value, str) else repr(value)}"
            )
        if kind is tuple:
            value = tuple(n.strip() for n in value.split(",") if n.strip())
        elif kind is str and spec_of(known[key]).choices:
            value = value.lower()
        given[key] = value
    return given


class Codec(ABC):
    """How one task's models look on the KServe path."""

    task: ClassVar[str]
    batched: ClassVar[bool]  # dim 0 of every input and output is the request's batch (<= max_batch_size)

    @property
    def parameters(self) -> list[str]:
        """The request parameters this task reads: its options offered on this path."""
        return kserve_parameters(TASK_OPTIONS[self.task])

    def options(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """The request's parameters (plain values) as the task's option values."""
        return options_from_parameters(TASK_OPTIONS[self.task], parameters)

    @abstractmethod
    def inputs(self, config: ModelConfig) -> list[TensorSpec]: ...

    @abstractmethod
    def outputs(self, config: ModelConfig) -> list[TensorSpec]: ...

    @abstractmethod
    def call(self, config: ModelConfig, tensors: dict[str, np.ndarray], options: dict[str, Any]) -> Call:
        """Validated input arrays (by name) and the parameters' options -> the pipeline's Call."""

    @abstractmethod
    def tensors(self, answer: Answer) -> dict[str, np.ndarray]:
        """The answer -> output arrays by name (CPU work: runs in the decode pool)."""


# --------------------------------------------------------------------------- image tasks

_IMAGE_INPUTS = [
    TensorSpec("IMAGE", ("BYTES",), (-1,), optional=True),
    TensorSpec("PIXELS", ("UINT8",), (-1, -1, -1, -1), optional=True),
]
_IMAGE_SIZE = TensorSpec("IMAGE_SIZE", ("INT32",), (-1, 2))


_ONE_IMAGE_INPUT = (
    "give exactly one image input: IMAGE (BYTES [B], encoded JPEG/PNG/WebP/BMP/TIFF files) or PIXELS "
    "(UINT8 [B, H, W, C], C = 1, 3 or 4)"
)
_ONE_GENERATION_INPUT = (
    "give exactly one input: SEED (INT64 [1], with the `count` parameter) or LATENT (FP32 [N, nz], one image per row)"
)


def one_of(tensors: Mapping[str, np.ndarray], first: str, second: str, refusal: str) -> str:
    """Which of two alternative inputs the request gave; InvalidInputError(``refusal``) unless exactly one."""
    if (first in tensors) == (second in tensors):
        raise InvalidInputError(refusal)
    return first if first in tensors else second


class ImageCodec(Codec):
    """One model input per image of the request (IMAGE or PIXELS)."""

    batched = True

    def inputs(self, config: ModelConfig) -> list[TensorSpec]:
        return list(_IMAGE_INPUTS)

    def outputs(self, config: ModelConfig) -> list[TensorSpec]:
        return [*self.task_outputs(config), _IMAGE_SIZE]

    @abstractmethod
    def task_outputs(self, config: ModelConfig) -> list[TensorSpec]: ...

    @abstractmethod
    def task_tensors(self, answer: Answer) -> dict[str, np.ndarray]: ...

    def call(self, config: ModelConfig, tensors: dict[str, np.ndarray], options: dict[str, Any]) -> Call:
        given = one_of(tensors, "IMAGE", "PIXELS", _ONE_IMAGE_INPUT)
        if given == "IMAGE":
            images: list = [bytes(data) for data in tensors["IMAGE"]]
        else:
            _, height, width, channels = tensors["PIXELS"].shape
            images = [RawPixels(p.tobytes(), height, width, channels) for p in tensors["PIXELS"]]
        name = "IMAGE" if "IMAGE" in tensors else "PIXELS"
        return Call(options=options, images=images, image_names=[f"{name}[{i}]" for i in range(len(images))])

    def tensors(self, answer: Answer) -> dict[str, np.ndarray]:
        sizes = np.array([image.shape[:2] for image in answer.images], np.int32).reshape(-1, 2)
        return {**self.task_tensors(answer), "IMAGE_SIZE": sizes}


class DetectionCodec(ImageCodec):
    """BOXES FP32 [B, N, 4] (x_min, y_min, x_max, y_max in input pixels), SCORES FP32 [B, N],
    LABELS INT64 [B, N] (the model's label ids, 1-based: class i is classes[i - 1]), CLASS_NAMES
    BYTES [B, N], COUNT INT32 [B]. N is the largest count of the request; image b's detections
    are the first COUNT[b] rows (by descending score), the rest are zeros, label 0 and b""."""

    task = "detection"

    def task_outputs(self, config: ModelConfig) -> list[TensorSpec]:
        return [
            TensorSpec("BOXES", ("FP32",), (-1, -1, 4)),
            TensorSpec("SCORES", ("FP32",), (-1, -1)),
            TensorSpec("LABELS", ("INT64",), (-1, -1)),
            TensorSpec("CLASS_NAMES", ("BYTES",), (-1, -1)),
            TensorSpec("COUNT", ("INT32",), (-1,)),
        ]

    def task_tensors(self, answer: Answer) -> dict[str, np.ndarray]:
        values = answer.outputs
        batch, most = len(values), max((len(v) for v in values), default=0)
        boxes, scores = np.zeros((batch, most, 4), np.float32), np.zeros((batch, most), np.float32)
        labels, names = np.zeros((batch, most), np.int64), np.full((batch, most), b"", dtype=object)
        for b, detections in enumerate(values):
            for n, d in enumerate(detections):
                boxes[b, n], scores[b, n], labels[b, n], names[b, n] = d.box, d.score, d.label, d.class_name.encode()
        return {
            "BOXES": boxes,
            "SCORES": scores,
            "LABELS": labels,
            "CLASS_NAMES": names,
            "COUNT": np.array([len(v) for v in values], np.int32),
        }


class SegmentationCodec(ImageCodec):
    """LABEL_MAP UINT8 [B, H, W] (class index per pixel, at the input's size). Images of one
    request may differ in size: H, W are the largest, the rest is LABEL_MAP_PAD (255);
    IMAGE_SIZE says each image's own size."""

    task = "segmentation"

    def task_outputs(self, config: ModelConfig) -> list[TensorSpec]:
        return [TensorSpec("LABEL_MAP", ("UINT8",), (-1, -1, -1))]

    def task_tensors(self, answer: Answer) -> dict[str, np.ndarray]:
        values = answer.outputs
        height, width = (max(v.labels.shape[i] for v in values) for i in (0, 1))
        label_map = np.full((len(values), height, width), LABEL_MAP_PAD, np.uint8)
        for b, seg in enumerate(values):
            label_map[b, : seg.labels.shape[0], : seg.labels.shape[1]] = seg.labels
        return {"LABEL_MAP": label_map}


class CaptioningCodec(ImageCodec):
    """CAPTION BYTES [B, K] (UTF-8 text), LOG_PROB FP32 [B, K] (natural log, <end> included),
    SCORE FP32 [B, K] (the ranking value): the K = num_captions best beams, best first."""

    task = "captioning"

    def task_outputs(self, config: ModelConfig) -> list[TensorSpec]:
        return [TensorSpec("CAPTION", "BYTES"), TensorSpec("LOG_PROB", "FP32"), TensorSpec("SCORE", "FP32")]

    def task_tensors(self, answer: Answer) -> dict[str, np.ndarray]:
        shape = (len(answer.outputs), answer.options.num_captions)
        text, log_prob, score = np.full(shape, b"", dtype=object), *(np.zeros(shape, np.float32) for _ in range(2))
        for b, captions in enumerate(answer.outputs):
            for k, c in enumerate(captions[: shape[1]]):
                text[b, k], log_prob[b, k], score[b, k] = c.text.encode(), c.log_prob, c.score
        return {"CAPTION": text, "LOG_PROB": log_prob, "SCORE": score}


class ClassificationCodec(ImageCodec):
    """LABELS INT64 [B, K] (class ids: indices into the model's classes), CLASS_NAMES BYTES [B, K],
    PROBABILITIES FP32 [B, K]: the K = min(top_k, classes) most probable, best first (a
    multi-label model: K = its class count, the labels over ``threshold`` first). An image with
    fewer has label -1, b"" and 0 in the rest of its row. With the parameter ``explain`` also
    GRADCAM FP32 [B, H, W]: each image's Grad-CAM map of its most probable class, in [0, 1], at
    the image's size (H, W the largest of the request, the rest -1; IMAGE_SIZE says each size)."""

    task = "classification"

    def task_outputs(self, config: ModelConfig) -> list[TensorSpec]:
        ranked = [
            TensorSpec("LABELS", "INT64"),
            TensorSpec("CLASS_NAMES", "BYTES"),
            TensorSpec("PROBABILITIES", "FP32"),
        ]
        return [*ranked, TensorSpec("GRADCAM", "FP32", (-1, -1, -1), optional=True)]

    def task_tensors(self, answer: Answer) -> dict[str, np.ndarray]:
        classes = len(answer.config.classes)
        most = classes if is_multi_label(answer.config) else min(answer.options.top_k, classes)
        shape = (len(answer.outputs), most)
        labels, names = np.full(shape, -1, np.int64), np.full(shape, b"", dtype=object)
        probabilities = np.zeros(shape, np.float32)
        for b, found in enumerate(answer.outputs):
            for k, x in enumerate(found.labels):
                labels[b, k], names[b, k], probabilities[b, k] = x.label, x.class_name.encode(), x.probability
        tensors = {"LABELS": labels, "CLASS_NAMES": names, "PROBABILITIES": probabilities}
        if answer.options.explain:
            height, width = (max(image.shape[i] for image in answer.images) for i in (0, 1))
            maps = np.full((len(answer.outputs), height, width), -1.0, np.float32)
            for b, (found, image) in enumerate(zip(answer.outputs, answer.images)):
                maps[b, : image.shape[0], : image.shape[1]] = found.explanation_map(image.shape[:2])
            tensors["GRADCAM"] = maps
        return tensors


# --------------------------------------------------------------------------- generation


class GenerationCodec(Codec):
    """SEED INT64/UINT64 [1] (>= 0) with parameter ``count`` (1..64, default 1), or LATENT FP32
    [N, nz] (N in 1..64) -> IMAGE UINT8 [N, H, W, C] and the LATENT FP32 [N, nz] used. The same
    images as the typed Generate for the same seed and count (one forward pass per request)."""

    task = "generation"
    batched = False

    def inputs(self, config: ModelConfig) -> list[TensorSpec]:
        nz = int(config.model_args.get("nz", 100))
        return [
            TensorSpec("SEED", ("INT64", "UINT64"), (1,), optional=True),
            TensorSpec("LATENT", ("FP32",), (-1, nz), optional=True),
        ]

    def outputs(self, config: ModelConfig) -> list[TensorSpec]:
        size, channels = (int(config.model_args.get(k, d)) for k, d in (("image_size", 64), ("channels", 3)))
        return [
            TensorSpec("IMAGE", ("UINT8",), (-1, size, size, channels)),
            TensorSpec("LATENT", ("FP32",), (-1, int(config.model_args.get("nz", 100)))),
        ]

    def call(self, config: ModelConfig, tensors: dict[str, np.ndarray], options: dict[str, Any]) -> Call:
        given = one_of(tensors, "SEED", "LATENT", _ONE_GENERATION_INPUT)
        if given == "LATENT":
            if options.get("count") is not None:
                raise InvalidInputError("the `count` parameter goes with SEED; with LATENT, N (its rows) is the count")
            rows = tensors["LATENT"].tolist()
            return Call(inputs=lambda c: [given_latents(LatentPrior.of(c.model_args), rows)])
        seed = int(tensors["SEED"][0])
        if seed < 0:
            raise InvalidInputError(f"SEED must be >= 0 (a uint64 seed), got {seed}")
        return Call(options={**options, "seed": seed})

    def tensors(self, answer: Answer) -> dict[str, np.ndarray]:
        return {"IMAGE": answer.outputs[0], "LATENT": answer.inputs[0].numpy()}
