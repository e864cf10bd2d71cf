"""The model store: ``<store>/<name>/model.safetensors`` + ``config.json``.

A stored model is rebuilt from its config alone (task -> builder, architecture, model_args,
classes) and its weights are read with safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from models.errors import InvalidInputError, UnknownModelError
from models.files import atomic_write_with
from models.registry import Registry

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1

# task name -> module that registers its loader in MODEL_BUILDERS (imported on first use).
TASK_MODULES: dict[str, str] = {
    "detection": "models.detection",
    "segmentation": "models.segmentation",
    "captioning": "models.captioning",
    "generation": "models.generation",
}

#: task -> fn(config) -> nn.Module with random weights, shaped as the config says.
MODEL_BUILDERS: Registry[Callable[["ModelConfig"], nn.Module]] = Registry("task")


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
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"model name must be a plain folder name, got {self.name!r}")
        if self.task not in TASK_MODULES:
            raise ValueError(f"unknown task {self.task!r}; known tasks: {sorted(TASK_MODULES)}")
        object.__setattr__(self, "classes", tuple(self.classes))

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"config format {version} is newer than this cvtasks understands ({FORMAT_VERSION})")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def build_model(config: ModelConfig) -> nn.Module:
    """A randomly initialised model shaped as ``config`` says."""
    importlib.import_module(TASK_MODULES[config.task])
    return MODEL_BUILDERS.get(config.task)(config)


def save_model(model: nn.Module, config: ModelConfig, directory: str | os.PathLike) -> Path:
    """Write weights then config (config last marks the folder complete). Returns the folder."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if not config.created:
        config = replace(config, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(out / WEIGHTS_FILE, lambda p: safetensors.torch.save_file(state, p, metadata={"task": config.task}))
    text = json.dumps(config.to_json(), indent=2, sort_keys=True)
    atomic_write_with(out / CONFIG_FILE, lambda p: Path(p).write_text(text + "\n"))
    return out


def load_config(directory: str | os.PathLike) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UnknownModelError(f"no model at {Path(directory)}: {CONFIG_FILE} is missing")
    return ModelConfig.from_json(json.loads(path.read_text()))


def load_model(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild a stored model in eval mode on ``device``; returns (model, config)."""
    config = load_config(directory)
    model = build_model(config)
    state = safetensors.torch.load_file(str(Path(directory) / WEIGHTS_FILE), device="cpu")
    model.load_state_dict(state)
    return model.to(device).eval(), config


def next_version(store: str | os.PathLike, name: str) -> str:
    """"1" for a new name, else the stored integer version + 1."""
    try:
        return str(int(load_config(Path(store) / name).version) + 1)
    except (UnknownModelError, ValueError):
        return "1"


def list_store(store: str | os.PathLike) -> list[ModelConfig]:
    """Configs of every complete model folder in ``store`` (sorted by name)."""
    root = Path(store)
    if not root.is_dir():
        return []
    return [load_config(d) for d in sorted(root.iterdir()) if (d / CONFIG_FILE).is_file()]


def resolve(store: str | os.PathLike, name: str) -> Path:
    """The folder of model ``name`` in ``store``; UnknownModelError lists what the store holds.
    A folder whose config.json names another model (a hand-copied folder) is refused: models are
    served and listed by the name in their config."""
    folder = Path(store) / name
    if name and "/" not in name and (folder / CONFIG_FILE).is_file():
        if (named := load_config(folder).name) != name:
            raise InvalidInputError(f"model folder {folder} holds a model named `{named}` in its {CONFIG_FILE}: "
                                    f"a model's folder must carry its name (rename the folder, or the name in "
                                    f"{CONFIG_FILE})")
        return folder
    names = [c.name for c in list_store(store)]
    raise UnknownModelError(f"Unknown model `{name}` in model store {store}. Available models: {names}")
