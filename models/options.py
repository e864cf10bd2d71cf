"""Request options of every task, each declared once: its default, bounds and help text.

A task's options are a frozen dataclass of ``option(...)`` fields (subclassing ``Options``);
everything else is derived from it: the checks (``__post_init__``), the KServe request
parameters, the typed RPC's option message, the client's keyword arguments and the command-line
flags. Torch-free, so the client and ``--help`` import it in milliseconds.

    @dataclass(frozen=True)
    class DetectOptions(Options):
        score_threshold: float = option(0.5, "drop detections scoring below this", low=0.0, high=1.0)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from models.errors import InvalidInputError, shown

OptionsT = TypeVar("OptionsT", bound="Options")


@dataclass(frozen=True)
class Spec:
    """What an option allows and how it is shown.

    ``low``/``high``: inclusive bounds; ``choices``: the allowed values; ``flag``: the command-line
    flag and client keyword when they differ from the field name (the names of earlier releases);
    ``kserve``: offered as a KServe request parameter (options that shape only the typed
    response, such as an overlay image, are not)."""

    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    flag: str | None = None
    kserve: bool = True


_REQUIRED = object()


def option(default: Any = _REQUIRED, help: str = "", **spec: Any) -> Any:
    """A dataclass field declared with its default, bounds and help (see Spec): the options of a
    task (``Options``) and the settings of a training run (models/train/) alike. A dict or list
    default is copied for each instance; no default makes the field required."""
    metadata = {"spec": Spec(help, **spec)}
    if default is _REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def spec_of(field: dataclasses.Field) -> Spec:
    return field.metadata.get("spec") or Spec("")


def base_type(field: dataclasses.Field, owner: type) -> type:
    """The field's type without ``| None``: bool, int, float, str, tuple (of strings) or dict."""
    hint = typing.get_type_hints(owner)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    origin = typing.get_origin(hint)
    return origin if origin in (tuple, dict, list) else hint


def _range_text(spec: Spec, kind: type) -> str:
    if spec.low is not None and spec.high is not None:
        return f"in {spec.low}..{spec.high}" if kind is int else f"in [{spec.low:g}, {spec.high:g}]"
    return f">= {spec.low}" if spec.low is not None else f"<= {spec.high}"


def _check_value(name: str, value: Any, kind: type, spec: Spec) -> Any:
    """``value`` as ``kind``, within ``spec``; InvalidInputError naming the option otherwise."""
    if kind is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise InvalidInputError(f"{name} must be a list of strings, got {value!r}")
        return tuple(str(v) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise InvalidInputError(f"{name} must be {kind.__name__}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        shown = " or ".join(f"`{c}`" for c in spec.choices)
        raise InvalidInputError(f"{name} must be {shown}, got `{value}`")
    low_ok = spec.low is None or value >= spec.low
    high_ok = spec.high is None or value <= spec.high
    if kind in (int, float) and not (low_ok and high_ok and value == value):
        raise InvalidInputError(f"{name} must be {_range_text(spec, kind)}, got {value}")
    return value


class Options:
    """Base of a task's options (subclasses are frozen dataclasses of ``option`` fields).

    ``None`` is allowed where the default is None (it means "the model decides", e.g. the
    captioner's trained length). Subclasses add checks that span fields in ``check``."""

    task: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.default is None:
                continue
            checked = _check_value(field.name, value, base_type(field, type(self)), spec_of(field))
            object.__setattr__(self, field.name, checked)
        self.check()

    def check(self) -> None:
        """Checks across fields (InvalidInputError); none by default."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """Flag name -> field name, for the options whose flag differs from the field."""
        return {spec_of(f).flag: f.name for f in dataclasses.fields(cls) if spec_of(f).flag}

    @classmethod
    def of(cls: type[OptionsT], given: Mapping[str, Any]) -> OptionsT:
        """The options from ``given`` (field or flag name -> value; None or absent takes the
        default). An unknown name is refused: a typo would otherwise silently keep the default."""
        aliases, values = cls.aliases(), {}
        for key, value in given.items():
            name = aliases.get(key, key)
            if name not in cls.__dataclass_fields__:  # type: ignore[attr-defined]
                raise InvalidInputError(
                    f"unknown option `{str(key)[:64]}`; {cls.task or 'this task'} takes {cls.names()}"
                )
            if value is not None:
                values[name] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """Plain data (tuples as lists), e.g. for a batch job's record of what it ran with."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- the tasks' options

MAX_IMAGES = 64  # images per Generate call and steps per Interpolate call
MAX_BEAM_SIZE = 16
MAX_CAPTION_LENGTH = 64  # words
MAX_LENGTH_PENALTY = 2.0
MAX_TOP_K = 1000  # labels per classification answer


@dataclass(frozen=True)
class DetectOptions(Options):
    """Which detections to keep. ``class_filter`` holds class names; empty keeps every class."""

    task: ClassVar[str] = "detection"
    score_threshold: float = option(0.5, "drop detections scoring below this", low=0.0, high=1.0)
    max_detections: int = option(100, "keep at most this many detections, best first", low=1)
    class_filter: tuple[str, ...] = option((), "keep only these class names (default: every class)", flag="classes")
    annotate: bool = option(False, "batch jobs: also write annotated/<input>.jpg with the boxes drawn", kserve=False)

    def check_classes(self, class_names: typing.Sequence[str]) -> None:
        """InvalidInputError when ``class_filter`` names a class the model does not know."""
        unknown = sorted(set(self.class_filter) - set(class_names))
        if unknown:
            raise InvalidInputError(
                f"unknown classes in class_filter: {shown(unknown)}; this model knows {list(class_names)}"
            )


@dataclass(frozen=True)
class SegmentOptions(Options):
    """How to segment one image (images with a side over ``max_side`` are resized or tiled) and
    what to return besides the label map."""

    task: ClassVar[str] = "segmentation"
    max_side: int = option(1024, "images with a longer side (pixels) are resized or tiled", low=64, high=4096)
    large_image_mode: str = option(
        "resize",
        "resize: segment a shrunk copy and scale the labels back; tile: overlapping max_side tiles at full resolution",
        choices=("resize", "tile"),
    )
    tile_overlap: int | None = option(None, "pixels two neighbouring tiles share (default max_side / 8)", low=0)
    include_overlay: bool = option(
        False, "also return the image with the classes blended on (PNG)", flag="overlay", kserve=False
    )
    overlay_alpha: float = option(0.5, "opacity of the class colours in the overlay", low=0.0, high=1.0, kserve=False)
    include_contours: bool = option(
        False, "also return the outline polygons of each class", flag="contours", kserve=False
    )

    def check(self) -> None:
        if self.tile_overlap is not None and not self.tile_overlap < self.max_side // 2:
            raise InvalidInputError(
                f"tile_overlap must be in 0..{self.max_side // 2 - 1} (less than half of max_side), "
                f"got {self.tile_overlap}"
            )

    @property
    def overlap(self) -> int:
        return self.max_side // 8 if self.tile_overlap is None else self.tile_overlap


@dataclass(frozen=True)
class CaptionOptions(Options):
    """Decoding options of one image: beam search (beam_size 1 = greedy) and what to return."""

    task: ClassVar[str] = "captioning"
    beam_size: int = option(3, "beams searched (1 = greedy)", low=1, high=MAX_BEAM_SIZE)
    max_length: int | None = option(
        None, "most words per caption (default: the model's trained length)", low=1, high=MAX_CAPTION_LENGTH
    )
    num_captions: int = option(1, "return the N best captions (at most beam_size)", low=1)
    length_penalty: float = option(
        1.0, "beams are ranked by log_prob / length ** length_penalty", low=0.0, high=MAX_LENGTH_PENALTY
    )

    def check(self) -> None:
        if self.num_captions > self.beam_size:
            raise InvalidInputError(f"num_captions must be in 1..beam_size ({self.beam_size}), got {self.num_captions}")


@dataclass(frozen=True)
class GenerateOptions(Options):
    """Which images to draw: ``count`` latents of ``seed``, from the model's own prior."""

    task: ClassVar[str] = "generation"
    seed: int = option(
        0, "the same seed gives the same images", low=0, high=2**64 - 1, kserve=False
    )  # KServe takes it as the SEED input
    count: int = option(1, "images to draw", low=1, high=MAX_IMAGES)


@dataclass(frozen=True)
class InterpolateOptions(Options):
    """A path of images between two seeds' first latents (the Interpolate request's own fields;
    not a batch option, so not in TASK_OPTIONS)."""

    task: ClassVar[str] = "generation"
    start_seed: int = option(0, "the seed of the path's first image", low=0, high=2**64 - 1)
    end_seed: int = option(1, "the seed of its last image", low=0, high=2**64 - 1)
    steps: int = option(8, "images on the path, both ends included", low=2, high=MAX_IMAGES)
    interpolation: str = option(
        "spherical", "spherical (along the sphere latents lie near) or linear", choices=("spherical", "linear")
    )


@dataclass(frozen=True)
class ClassifyOptions(Options):
    """Which labels to return: the ``top_k`` most probable (at most the model's class count), best
    first; from a multi-label model every label over ``threshold``. ``explain``: with a Grad-CAM map."""

    task: ClassVar[str] = "classification"
    top_k: int = option(
        5, "return the K most probable classes (at most the model's class count)", low=1, high=MAX_TOP_K
    )
    min_probability: float = option(0.0, "drop labels less probable than this", low=0.0, high=1.0)
    threshold: float = option(
        0.5,
        "multi-label models: return every label at least this probable (a sigmoid per class), instead of the top K",
        low=0.0,
        high=1.0,
    )
    explain: bool = option(
        False,
        "also a Grad-CAM heat map of the most probable class: an overlay PNG and the map (typed RPC), "
        "the GRADCAM output (KServe), explanations/<input>.png (batch jobs)",
    )


# Task name -> its options class: the torch-free face of models/tasks.py (the command line and
# the client look options up here without importing any model code).
TASK_OPTIONS: dict[str, type[Options]] = {
    cls.task: cls for cls in (DetectOptions, SegmentOptions, CaptionOptions, GenerateOptions, ClassifyOptions)
}
