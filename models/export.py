"""Export a stored model to ONNX or TorchScript, checked against the PyTorch model it came from.

    folder, parity = export_model("model_store/quickstart-classifier", "onnx", "exports/classifier")

The folder written is a model-store folder: the stored model's ``model.safetensors`` and its
``config.json`` (with ``extra["export"]``: the format, the file, its input and output names and
the parity measured), plus ``model.onnx`` or ``model.ts``. Batch size, and for image models the
image's height and width, are dynamic (ONNX ``dynamic_axes``; a traced TorchScript module takes
any size its layers take). Before anything is written, the export runs beside the PyTorch model
on sample inputs of two batch sizes and two image sizes and must agree within each task's
tolerance (``TOLERANCES``), else ExportError says by how much it did not.

Exported: classifiers (images -> logits), segmenters (normalised images -> logits; the label
map is their argmax) and DCGAN generators (latents (N, nz, 1, 1) -> images in [-1, 1]).
Detectors and captioners are not exported yet: torchvision's Faster R-CNN and the beam search
around the captioner's LSTM need their own export path (a later slice of the export issue).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import checkpoints
from models.errors import InvalidInputError

FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}


class ExportError(RuntimeError):
    """The export ran but does not agree with the PyTorch model within the stated tolerance."""


@dataclass(frozen=True)
class Exportable:
    """How one task's model is exported: the module, a sample input for a (batch, side), the
    names, which axes are dynamic, and how agreement is measured (a dict of figures, checked
    against ``TOLERANCES``)."""

    module: Callable[[nn.Module], nn.Module]
    sample: Callable[[checkpoints.ModelConfig, int, int], torch.Tensor]
    input_name: str
    output_name: str
    dynamic: dict[int, str]
    agreement: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    sizes: Callable[[checkpoints.ModelConfig], tuple[int, int]]  # the two sides the parity check uses


def _images(config: checkpoints.ModelConfig, batch: int, side: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * 1000 + side)
    return torch.rand(batch, 3, side, side, generator=generator)


def _latents(config: checkpoints.ModelConfig, batch: int, side: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, int(config.model_args.get("nz", 100)), 1, 1, generator=generator)


def _logits_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    scale = max(1.0, float(ours.abs().max()))
    return {
        "max_abs_diff_over_scale": float((ours - theirs).abs().max()) / scale,
        "top1_disagreement": float((ours.argmax(1) != theirs.argmax(1)).float().mean()),
    }


def _map_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    return {"label_map_disagreement": float((ours.argmax(1) != theirs.argmax(1)).float().mean())}


def _pixel_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    return {"max_pixel_diff": float((ours - theirs).abs().max())}  # images in [-1, 1]


def _input_side(multiple: int) -> Callable[[checkpoints.ModelConfig], tuple[int, int]]:
    def sides(config: checkpoints.ModelConfig) -> tuple[int, int]:
        side = max(multiple, (config.input_size or 224) // multiple * multiple)
        return side, side + multiple  # the trained side and another one, both multiples

    return sides


IMAGE_AXES = {0: "batch", 2: "height", 3: "width"}
EXPORTABLE: dict[str, Exportable] = {
    "classification": Exportable(
        lambda m: m, _images, "images", "logits", IMAGE_AXES, _logits_agreement, _input_side(32)
    ),
    "segmentation": Exportable(lambda m: m, _images, "images", "logits", IMAGE_AXES, _map_agreement, _input_side(32)),
    # the generator's network alone: its forward's shape checks are Python, not graph
    "generation": Exportable(
        lambda m: m.net, _latents, "latents", "images", {0: "batch"}, _pixel_agreement, lambda c: (1, 1)
    ),
}
# What "agrees" means per figure: the export's answers may differ from PyTorch's by float
# rounding only (another kernel order), never in a decision.
TOLERANCES = {
    "max_abs_diff_over_scale": 1e-4,
    "top1_disagreement": 0.0,
    "label_map_disagreement": 1e-3,  # pixels whose logits tie within rounding may flip
    "max_pixel_diff": 1e-4,  # of the [-1, 1] range: ~0.01 of a uint8 level
}


def _exportable(task: str) -> Exportable:
    if task not in EXPORTABLE:
        raise InvalidInputError(
            f"{task} models cannot be exported yet; exportable: {', '.join(EXPORTABLE)} "
            "(detectors and captioners need their own export path)"
        )
    return EXPORTABLE[task]


def _write(module: nn.Module, spec: Exportable, sample: torch.Tensor, fmt: str, path: Path) -> None:
    if fmt == "onnx":
        with warnings.catch_warnings():  # the TorchScript-based exporter: needs no onnxscript
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                (sample,),
                str(path),
                dynamo=False,
                input_names=[spec.input_name],
                output_names=[spec.output_name],
                dynamic_axes={spec.input_name: spec.dynamic, spec.output_name: {0: "batch"}},
                opset_version=17,
            )
    else:
        with warnings.catch_warnings(), torch.no_grad():  # torch.jit is deprecated for torch.export, still asked for
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.trace(module, sample, check_trace=False), str(path))


def load_runner(
    path: str | os.PathLike, fmt: str, *, providers: Sequence[Any] = ("CPUExecutionProvider",)
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A written export as a function of one CPU tensor -> CPU tensor (onnxruntime for ONNX, with
    ``providers``: onnxruntime's execution providers, first choice first)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def check_parity(
    module: nn.Module, runner: Callable[[torch.Tensor], torch.Tensor], spec: Exportable, config: Any
) -> dict[str, float]:
    """The worst of each agreement figure over batches of 1 and 3 at the two sizes; ExportError
    when one is over its tolerance."""
    worst: dict[str, float] = {}
    for side in sorted(set(spec.sizes(config))):
        for batch in (1, 3):
            x = spec.sample(config, batch, side)
            with torch.no_grad():
                ours, theirs = module(x), runner(x)
            for key, value in spec.agreement(ours, theirs).items():
                worst[key] = max(worst.get(key, 0.0), value)
    over = {k: v for k, v in worst.items() if v > TOLERANCES[k]}
    if over:
        detail = ", ".join(f"{k} {v:.3g} > {TOLERANCES[k]:g}" for k, v in over.items())
        raise ExportError(f"the export disagrees with the PyTorch model: {detail}")
    return worst


def export_model(model_dir: str | os.PathLike, fmt: str, out: str | os.PathLike) -> tuple[Path, dict[str, float]]:
    """Export the stored model in ``model_dir`` as ``fmt`` into the folder ``out`` (see the module
    docstring); returns (the folder, the parity figures)."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model, config = checkpoints.load_model(model_dir, device="cpu")
    spec = _exportable(config.task)
    module = spec.module(model).eval()
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    side = spec.sizes(config)[0]
    _write(module, spec, spec.sample(config, 2, side), fmt, target / FILES[fmt])
    try:
        parity = check_parity(module, load_runner(target / FILES[fmt], fmt), spec, config)
    except ExportError:
        (target / FILES[fmt]).unlink()
        raise
    shutil.copyfile(Path(model_dir) / checkpoints.WEIGHTS_FILE, target / checkpoints.WEIGHTS_FILE)
    record = {
        "format": fmt,
        "file": FILES[fmt],
        "input": spec.input_name,
        "output": spec.output_name,
        "dynamic_axes": {str(k): v for k, v in spec.dynamic.items()},
        "parity": parity,
        "tolerances": {k: TOLERANCES[k] for k in parity},
        "torch": torch.__version__,
    }
    stored = {**config.to_json(), "extra": {**config.extra, "export": record}}
    (target / checkpoints.CONFIG_FILE).write_text(json.dumps(stored, indent=2) + "\n")
    return target, parity
