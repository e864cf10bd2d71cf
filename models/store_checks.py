"""Checks of a stored model folder, made before anything is built or read from it.

A model store may hold folders that are broken (a half-copied file, a hand-edited config) or
hostile (a config that asks for a network of 10^12 parameters, or for weights from /etc/passwd).
Each check raises ValueError saying what is wrong; models.checkpoints prefixes the file's name
relative to the store (``folder/config.json``) and raises it as a ModelStoreError. Nothing here
allocates a model's memory: shapes come from a build on torch's ``meta`` device and from the
safetensors header, which ``safe_open`` reads without the tensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open

from models.errors import InvalidInputError

MAX_NAME_LENGTH = 128  # characters of a model name, which is also its folder's name
MAX_CONFIG_BYTES = 16 * 2**20  # a larger config.json is refused unread (a vocabulary is ~100 KB)
MAX_PARAMETERS = 1_000_000_000  # weights + buffers of one model: 4 GB as float32
MAX_ARG_LIST = 64  # items of one list in model_args (e.g. decoder_channels, widths)
# model_args keys ending so name a weight file outside the model folder (segmentation's and
# captioning's `encoder_weights_path`): training reads them to initialise a model, but a stored
# model's weights all come from its own model.safetensors, so a stored config never carries one.
EXTERNAL_WEIGHTS_SUFFIX = "weights_path"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
FIX_CONFIG = "fix the file or retrain the model"


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message never echoes a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_name(name: object) -> str:
    """``name`` if it is a model name (a plain folder name), else InvalidInputError saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"a model name must be a non-empty string, got {short(name)}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"model name {short(name, 40)} is too long: a model name has at most {MAX_NAME_LENGTH} characters"
        )
    if not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"model name {short(name)} is not a plain folder name: use letters, digits, "
            "'.', '_' and '-', and do not start with '.' or '-'"
        )
    return name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(_is_number(x) for x in value)


def _normalization(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and _numbers(value.get("mean"))
        and _numbers(value.get("std"))
        and 1 <= len(value["mean"]) == len(value["std"]) <= 4
        and all(s > 0 for s in value["std"])
    )


def json_kind(value: Any) -> str:
    """What a JSON value is, in words ("a list", "a string", ...)."""
    if isinstance(value, bool):
        return "true/false"
    for kind, words in (
        (dict, "an object"),
        (list, "a list"),
        (str, "a string"),
        (int, "a number"),
        (float, "a number"),
    ):
        if isinstance(value, kind):
            return words
    return "null" if value is None else type(value).__name__


# config.json field -> (test, what it must be). Fields not listed are ignored (newer writers).
CONFIG_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "task": (lambda v: isinstance(v, str), "a string"),
    "architecture": (lambda v: isinstance(v, str) and 0 < len(v) <= 100, "a string of 1 to 100 characters"),
    "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of strings"),
    "model_args": (lambda v: isinstance(v, dict), "an object"),
    "input_size": (lambda v: v is None or (_is_int(v) and 0 < v <= 65536), "an integer in 1..65536 or null"),
    "normalization": (_normalization, 'an object {"mean": [...], "std": [...]} of 1 to 4 numbers each, std > 0'),
    "metrics": (lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values()), "an object of numbers"),
    "version": (lambda v: isinstance(v, str), 'a string (e.g. "2")'),
    "created": (lambda v: isinstance(v, str), "a string"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
}
REQUIRED_FIELDS = ("name", "task", "architecture", "classes")


def check_config_json(data: Any, *, format_version: int) -> None:
    """ValueError unless ``data`` (config.json, parsed) is an object of the format this cvtasks
    reads (``format_version`` or older), with the required fields, each of its type."""
    if not isinstance(data, dict):
        raise ValueError(f"must hold a JSON object, not {json_kind(data)}; {FIX_CONFIG}")
    version = data.get("format_version", format_version)
    if not _is_int(version) or version < 1:
        raise ValueError(f"`format_version` must be a positive integer, not {short(version)}; {FIX_CONFIG}")
    if version > format_version:
        raise ValueError(
            f"format {version} is newer than this cvtasks reads (up to {format_version}): "
            "upgrade cvtasks to serve this model"
        )
    missing = [f"`{f}`" for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing; {FIX_CONFIG}")
    for key, (test, what) in CONFIG_FIELDS.items():
        if key in data and not test(data[key]):
            raise ValueError(f"`{key}` must be {what}, not {json_kind(data[key])} {short(data[key])}; {FIX_CONFIG}")
    check_model_args(data.get("model_args", {}))


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every value nested in ``value``, lists and objects included."""
    yield path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from _leaves(item, f"{path}[{key}]" if isinstance(value, list) else f"{path}.{key}")


def check_model_args(args: Mapping[str, Any]) -> None:
    """ValueError for model_args no stored model has: a weight path outside the folder, a
    negative number (sizes, counts and rates never are), a list longer than MAX_ARG_LIST."""
    for key, value in args.items():
        if str(key).endswith(EXTERNAL_WEIGHTS_SUFFIX) and value is not None:
            raise ValueError(
                f"`model_args.{key}` names weights outside the model folder, but a stored "
                f"model's weights all come from its own weights file: remove `{key}` from model_args"
            )
        for path, leaf in _leaves(value, f"model_args.{key}"):
            if _is_number(leaf) and leaf < 0:
                raise ValueError(f"`{path}` is {leaf}: sizes, counts and rates are never negative; {FIX_CONFIG}")
            if isinstance(leaf, list) and len(leaf) > MAX_ARG_LIST:
                raise ValueError(
                    f"`{path}` has {len(leaf)} items, more than any model takes ({MAX_ARG_LIST}); {FIX_CONFIG}"
                )


def check_size(shapes: Mapping[str, tuple[int, ...]]) -> None:
    """ValueError when the weights of ``shapes`` hold more than MAX_PARAMETERS numbers."""
    count = sum(math.prod(shape) for shape in shapes.values())
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"the model it describes has {count:,} parameters, more than cvtasks loads "
            f"({MAX_PARAMETERS:,}): fix model_args (a width or size far too large?) or retrain"
        )


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header (no tensor is read); ValueError when
    the file is not a complete safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 — safetensors' own error types vary by version
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ValueError(
            f"not a complete safetensors file ({reason}): it is truncated, empty or of "
            "another kind; restore it or retrain the model"
        ) from None


def check_weights(path: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    """ValueError unless the safetensors file ``path`` holds exactly the tensors ``expected``
    (name -> shape): the weights of another model, or of an edited config, are refused."""
    found = header_shapes(path)
    missing = [k for k in expected if k not in found]
    unknown = [k for k in found if k not in expected]
    reshaped = [
        f"{k}: file {list(found[k])}, model {list(expected[k])}"
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    if missing or unknown or reshaped:
        faults = [
            f"{len(v)} {what} (e.g. {', '.join(v[:2])})"
            for v, what in (
                (missing, "weights missing from the file"),
                (unknown, "in the file but not in the model"),
                (reshaped, "of another shape"),
            )
            if v
        ]
        raise ValueError(
            f"its weights do not fit the model config.json describes: {'; '.join(faults)}. They "
            "are another model's or the config was edited: restore the folder or retrain the model"
        )
