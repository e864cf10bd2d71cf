"""The model store: ``<store>/<name>/model.safetensors`` + ``config.json``.

A stored model is rebuilt from its config alone (task -> builder, architecture, model_args,
classes) and its weights are read with safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from models.errors import InvalidInputError, ModelStoreError, UnknownModelError
from models.files import atomic_write_with
from models.store_checks import (
    FIX_CONFIG,
    MAX_CONFIG_BYTES,
    check_config_json,
    check_name,
    check_size,
    check_weights,
    short,
)
from models.tasks import TASKS

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1

log = logging.getLogger("cvtasks.store")


# the fields that name a stored model wherever it is described (a server's ModelInfo too)
IDENTITY = ("name", "task", "architecture", "version")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild and serve a stored model (written as config.json).

    ``classes`` excludes background. ``input_size`` is the side in pixels the model was trained
    at (None when the model takes any size). ``normalization`` holds ``mean``/``std`` per channel
    for inputs in [0, 1]. ``extra`` carries task-specific data (e.g. a vocabulary).
    """

    name: str
    task: str
    architecture: str
    classes: tuple[str, ...]
    model_args: dict[str, Any] = field(default_factory=dict)
    input_size: int | None = None
    normalization: dict[str, list[float]] = field(
        default_factory=lambda: {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    )
    metrics: dict[str, float] = field(default_factory=dict)
    version: str = "1"
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.task not in TASKS:
            raise ValueError(f"unknown task {short(self.task)}; known tasks: {TASKS.names()}")
        object.__setattr__(self, "classes", tuple(self.classes))

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_json(cls, data: Any) -> ModelConfig:
        """The config of parsed config.json ``data``; ValueError says which field is wrong."""
        check_config_json(data, format_version=FORMAT_VERSION)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _builder(config: ModelConfig) -> Callable[[ModelConfig], nn.Module]:
    return TASKS.get(config.task).build_model


def build_model(config: ModelConfig) -> nn.Module:
    """A randomly initialised model shaped as ``config`` says."""
    return _builder(config)(config)


def save_model(model: nn.Module, config: ModelConfig, directory: str | os.PathLike) -> Path:
    """Write weights then config (config last marks the folder complete). Returns the folder."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if not config.created:
        config = replace(config, created=datetime.now(UTC).isoformat(timespec="seconds"))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(
        out / WEIGHTS_FILE, lambda p: safetensors.torch.save_file(state, p, metadata={"task": config.task})
    )
    text = json.dumps(config.to_json(), indent=2, sort_keys=True)
    atomic_write_with(out / CONFIG_FILE, lambda p: Path(p).write_text(text + "\n"))
    return out


def _where(folder: Path, file: str) -> str:
    """``folder/file`` named relative to the store: messages never show absolute paths."""
    return f"{folder.name}/{file}"


def _has_config(folder: Path) -> bool:
    try:
        return (folder / CONFIG_FILE).is_file()
    except OSError as exc:  # e.g. a folder this process may not enter
        raise ModelStoreError(
            f"{_where(folder, CONFIG_FILE)} cannot be read ({exc.strerror}): check the folder's permissions"
        ) from None


def _read_json(path: Path) -> Any:
    with path.open("rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)  # never more, however large the file is (or grows)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"more than a config may be ({MAX_CONFIG_BYTES:,} bytes); {FIX_CONFIG}")
    return json.loads(data.decode("utf-8"))


def _config_fault(exc: BaseException) -> str:
    """Why config.json could not be read, in words (an OSError's strerror: never its path)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc}); {FIX_CONFIG}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text; {FIX_CONFIG}"
    if isinstance(exc, RecursionError):
        return f"nests too deeply to be a config; {FIX_CONFIG}"
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror}): check the file's permissions"
    return str(exc)


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """The config of the model folder ``directory``: UnknownModelError when it holds no config.json,
    ModelStoreError naming ``<folder>/config.json`` and its fault when that file is unreadable,
    not JSON, of a newer format, or has a field of the wrong type."""
    folder = Path(directory)
    if not _has_config(folder):
        raise UnknownModelError(f"no model in folder `{folder.name}`: it has no {CONFIG_FILE}")
    try:
        return ModelConfig.from_json(_read_json(folder / CONFIG_FILE))
    except (ValueError, RecursionError, OSError) as exc:
        raise ModelStoreError(f"{_where(folder, CONFIG_FILE)}: {_config_fault(exc)}") from exc


def _planned_shapes(config: ModelConfig, folder: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight ``config`` describes, from a build on torch's meta device
    (nothing is allocated); ModelStoreError when it does not build or is over MAX_PARAMETERS."""
    builder, where = _builder(config), _where(folder, CONFIG_FILE)
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in builder(config).state_dict().items()}
    except Exception as exc:  # noqa: BLE001 — any builder's complaint about the config
        raise ModelStoreError(
            f"{where}: its model_args do not build a {config.task} `{config.architecture}` model "
            f"({type(exc).__name__}: {str(exc)[:300]}); fix model_args or the architecture, "
            "or retrain the model"
        ) from exc
    try:
        check_size(shapes)
    except ValueError as exc:
        raise ModelStoreError(f"{where}: {exc}") from None
    return shapes


def _check_weights_file(folder: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    path, where = folder / WEIGHTS_FILE, _where(folder, WEIGHTS_FILE)
    if not path.is_file():
        raise ModelStoreError(
            f"{where}: no such file: the folder has a {CONFIG_FILE} but no weights; restore "
            "the file or retrain the model"
        )
    try:
        check_weights(path, shapes)
    except ValueError as exc:
        raise ModelStoreError(f"{where}: {exc}") from None


def _build_and_fill(config: ModelConfig, weights: Path) -> nn.Module:
    model = build_model(config)
    model.load_state_dict(safetensors.torch.load_file(str(weights), device="cpu"))
    return model


def _filled_model(config: ModelConfig, folder: Path) -> nn.Module:
    """The model built for real and filled from its weights file. On failure the error is raised
    outside the ``except`` block, so no traceback keeps the half-built model's memory alive."""
    try:
        return _build_and_fill(config, folder / WEIGHTS_FILE)
    except Exception as exc:  # noqa: BLE001 — the checks passed, so this is a rarer fault of the folder
        fault = f"{type(exc).__name__}: {str(exc)[:300]}"
    raise ModelStoreError(
        f"{_where(folder, WEIGHTS_FILE)}: does not load into the model {CONFIG_FILE} "
        f"describes ({fault}); restore the folder or retrain the model"
    )


def load_model(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild a stored model in eval mode on ``device``; returns (model, config).

    Nothing is allocated until the folder proves sound: the model is first built on torch's meta
    device, held to MAX_PARAMETERS, and its weight names and shapes are compared with the
    safetensors header; only then is it built for real and filled. Weight paths in model_args
    are refused, never followed (its own weights file holds every weight). Every fault is a
    ModelStoreError naming the file (``folder/config.json`` or ``folder/model.safetensors``)."""
    folder = Path(directory)
    config = load_config(folder)
    _check_weights_file(folder, _planned_shapes(config, folder))
    return _filled_model(config, folder).to(device).eval(), config


def next_version(store: str | os.PathLike, name: str) -> str:
    """ "1" for a new name, else the stored integer version + 1."""
    try:
        return str(int(load_config(Path(store) / name).version) + 1)
    except (UnknownModelError, ValueError):
        return "1"


_reported: set[tuple[str, str]] = set()  # (folder, fault) already logged by list_store


def _report_broken(folder: Path, exc: ModelStoreError) -> None:
    key = (str(folder.resolve()), str(exc))
    if key not in _reported:
        _reported.add(key)
        log.warning("model store %s: skipping broken model folder `%s`: %s", folder.parent, folder.name, exc)


def list_store(store: str | os.PathLike) -> list[ModelConfig]:
    """Configs of every model folder in ``store`` whose config.json is sound (sorted by name). A
    broken one is logged (once per folder and fault) and skipped: it never hides the others."""
    root = Path(store)
    if not root.is_dir():
        return []
    configs = []
    for folder in sorted(root.iterdir()):
        try:
            if _has_config(folder):
                configs.append(load_config(folder))
        except ModelStoreError as exc:
            _report_broken(folder, exc)
    return configs


def find(store: str | os.PathLike, name: str) -> Path | None:
    """The folder of model ``name`` in ``store``, or None when the store has none of that name.
    InvalidInputError for a name that is not a plain folder name, and for a folder whose
    config.json names another model (a hand-copied folder: models are served and listed by the
    name in their config); ModelStoreError for a broken config.json."""
    folder = Path(store) / check_name(name)
    if not _has_config(folder):
        return None
    if (named := load_config(folder).name) != name:
        raise InvalidInputError(
            f"model folder `{name}` holds a model named `{named}` in its {CONFIG_FILE}: a "
            f"model's folder must carry its name (rename the folder, or the name in "
            f"{CONFIG_FILE})"
        )
    return folder


def resolve(store: str | os.PathLike, name: str) -> Path:
    """The folder of model ``name`` in ``store``; UnknownModelError lists what the store holds (for
    the command line: a server's LoadModel names no store folders, see services.models)."""
    folder = find(store, name)
    if folder is None:
        names = [c.name for c in list_store(store)]
        raise UnknownModelError(f"Unknown model `{name}` in model store {store}. Available models: {names}")
    return folder
