"""Export a stored model to ONNX or TorchScript, checked against the PyTorch model it came from.

    folder, parity = export_model("model_store/quickstart-classifier", "onnx", "exports/classifier")
    config, run = load_export("exports/classifier")  # run: what the task's model answers, from the export

The folder written is a model-store folder: the stored model's ``model.safetensors`` and its
``config.json`` (with ``extra["export"]``: the format, each part's file, input and output names
and dynamic axes, the parity measured and its tolerances), plus the exported files. Before
anything is kept, the export runs beside the PyTorch model and must agree within each task's
tolerance (``TOLERANCES``), else ExportError says by how much it did not and the files go.

Each task's row in ``EXPORTABLE`` says what is exported, how agreement is measured and how the
exported parts are run (``load_export``):

- classifiers (images -> logits), segmenters (normalised images -> logits; the label map is
  their argmax) and DCGAN generators (latents (N, nz, 1, 1) -> images in [-1, 1]): one file,
  ``model.onnx`` / ``model.ts`` (traced), a function of one tensor; batch and, for images,
  height and width dynamic; checked on inputs of two batch sizes and two image sizes.
- detectors: ``model.onnx`` / ``model.ts`` (scripted), one image at the model's size ->
  boxes, scores, labels; run image by image by export_detection.ExportedDetector, which resizes
  in Python (see models/export_detection.py for why, and why there is no batch axis).
- captioners: ``encoder.*`` (images -> LSTM state) and ``step.*`` (previous tokens + state ->
  log-probabilities + new state); greedy and beam search stay in Python around them
  (export_captioning.ExportedCaptioner with captioning.greedy / beam_search).

Detectors and captioners are checked on sample images: ``samples`` (a folder; the first
``MAX_SAMPLES`` images) or, by default, synthetic shapes scenes (models/synth.py) of a few sizes.
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

import numpy as np
import torch
from torch import nn

from models import checkpoints, export_captioning, export_detection
from models.datasets import IMAGE_SUFFIXES
from models.errors import InvalidInputError
from models.preprocessing import read_image
from models.synth import render

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}
FILES = {fmt: f"model{suffix}" for fmt, suffix in SUFFIXES.items()}  # the file of a one-part export
MAX_SAMPLES = 8  # sample images a detector's or captioner's parity check reads from a folder
Runner = Callable[..., Any]  # an exported part: CPU tensors -> a CPU tensor, or a tuple when several


class ExportError(RuntimeError):
    """The export ran but does not agree with the PyTorch model within the stated tolerance (or
    its check compared nothing)."""


@dataclass(frozen=True)
class Exportable:
    """A one-part export of a function of one tensor (classifiers, segmenters, generators): the
    module, a sample input for a (batch, side), the names, which axes are dynamic, and how
    agreement is measured (a dict of figures, checked against ``TOLERANCES``).

    Every row of ``EXPORTABLE`` answers ``parts`` (what to write), ``check`` (the parity figures,
    or ExportError), ``assemble`` (what runs the loaded parts) and ``facts`` (added to the record)."""

    module: Callable[[nn.Module], nn.Module]
    sample: Callable[[checkpoints.ModelConfig, int, int], torch.Tensor]
    input_name: str
    output_name: str
    dynamic: dict[int, str]
    agreement: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    sizes: Callable[[checkpoints.ModelConfig], tuple[int, int]]  # the two sides the parity check uses

    def parts(self, model: nn.Module, config: checkpoints.ModelConfig) -> tuple[Part, ...]:
        example = (self.sample(config, 2, self.sizes(config)[0]),)
        axes = {self.input_name: self.dynamic, self.output_name: {0: "batch"}}
        return (Part("model", self.module, example, (self.input_name,), (self.output_name,), axes),)

    def check(
        self, model: nn.Module, runners: dict[str, Runner], config: Any, samples: Any, *, minimums: bool = True
    ) -> dict[str, float]:
        return check_parity(self.module(model).eval(), runners["model"], self, config)

    def assemble(self, runners: dict[str, Runner], record: dict[str, Any]) -> Runner:
        return runners["model"]

    def facts(self, model: nn.Module) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Part:
    """One exported file, ``<name>.onnx`` or ``<name>.ts``: ``module(model)`` exported with the
    example inputs, its input and output names and their dynamic axes; ``script``: torch.jit.script
    instead of trace for TorchScript (code whose loops depend on the data)."""

    name: str
    module: Callable[[nn.Module], nn.Module]
    example: tuple[torch.Tensor, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]
    script: bool = False


@dataclass(frozen=True)
class PartsExportable:
    """An export of one or more parts checked on sample images (detectors, captioners).

    ``figures(model, runners, config, samples, band=...)`` measures agreement (checked against
    ``TOLERANCES``, at least ``MINIMUMS``); ``assemble(runners, record)`` makes what runs the export
    from its loaded parts and the export's config record; ``facts(model)`` adds to that record."""

    make_parts: Callable[[nn.Module, checkpoints.ModelConfig], tuple[Part, ...]]
    figures: Callable[..., dict[str, float]]
    assemble: Callable[[dict[str, Runner], dict[str, Any]], Any]
    facts: Callable[[nn.Module], dict[str, Any]] = lambda model: {}

    def parts(self, model: nn.Module, config: checkpoints.ModelConfig) -> tuple[Part, ...]:
        return self.make_parts(model, config)

    def check(
        self,
        model: nn.Module,
        runners: dict[str, Runner],
        config: Any,
        samples: list[np.ndarray],
        *,
        minimums: bool = True,
    ) -> dict[str, float]:
        """The figures, or ExportError when one is over its tolerance (or, with ``minimums``, under
        its minimum: ``unmet_minimums`` says which, for a caller that only warns)."""
        figures = self.figures(model, runners, config, samples, band=TOLERANCES["max_score_diff"])
        return _refused_unless_agreed(figures, minimums=minimums)


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


def _detector_parts(model: nn.Module, config: checkpoints.ModelConfig) -> tuple[Part, ...]:
    d = export_detection
    return (Part("model", d.DetectorGraph, d.example(model, config), d.INPUTS, d.OUTPUTS, d.DYNAMIC, script=True),)


def _captioner_parts(model: nn.Module, config: checkpoints.ModelConfig) -> tuple[Part, ...]:
    c = export_captioning
    return (
        Part("encoder", lambda m: c.EncoderGraph(m, config), c.encoder_example(model, config), *c.ENCODER),
        Part("step", c.StepGraph, c.step_example(model, config), *c.STEP),
    )


IMAGE_AXES = {0: "batch", 2: "height", 3: "width"}
EXPORTABLE: dict[str, Exportable | PartsExportable] = {
    "classification": Exportable(
        lambda m: m, _images, "images", "logits", IMAGE_AXES, _logits_agreement, _input_side(32)
    ),
    "segmentation": Exportable(lambda m: m, _images, "images", "logits", IMAGE_AXES, _map_agreement, _input_side(32)),
    # the generator's network alone: its forward's shape checks are Python, not graph
    "generation": Exportable(
        lambda m: m.net, _latents, "latents", "images", {0: "batch"}, _pixel_agreement, lambda c: (1, 1)
    ),
    "detection": PartsExportable(
        _detector_parts, export_detection.figures, export_detection.assemble, export_detection.sizes_of
    ),
    "captioning": PartsExportable(_captioner_parts, export_captioning.figures, export_captioning.assemble),
}
# What "agrees" means per figure: the export's answers may differ from PyTorch's by float
# rounding only (another kernel order), never in a decision.
TOLERANCES = {
    "max_abs_diff_over_scale": 1e-4,
    "top1_disagreement": 0.0,
    "label_map_disagreement": 1e-3,  # pixels whose logits tie within rounding may flip
    "max_pixel_diff": 1e-4,  # of the [-1, 1] range: ~0.01 of a uint8 level
    # detection, over every box the model returns for the sample images (export_detection.agreement):
    "unmatched_boxes": 0.0,  # the same boxes kept: none of one without its match (IoU > 0.5) in the other
    "label_disagreements": 0.0,  # and of the same class
    "max_box_diff_px": 0.05,  # a twentieth of a pixel (rounding gives ~1e-5 px)
    "max_score_diff": 1e-4,  # also the band around the model's score cut where a box may fall either side
    # captioning (export_captioning.figures): the same words, greedy and beam search
    "caption_disagreement": 0.0,
    "max_log_prob_diff": 1e-3,  # a caption's summed log-probability
}
# Figures that must be at least this for a check to have checked anything, and what to do if not.
MINIMUMS = {
    "boxes_compared": (
        1.0,
        "the detector found no box in the sample images to compare; pass samples (--samples DIR) "
        "of images it finds objects in",
    ),
}


def _exportable(task: str) -> Exportable | PartsExportable:
    if task not in EXPORTABLE:
        raise InvalidInputError(f"{task} models cannot be exported; exportable: {', '.join(EXPORTABLE)}")
    return EXPORTABLE[task]


def _write(module: nn.Module, part: Part, fmt: str, path: Path) -> None:
    # The TorchScript-based ONNX exporter (needs no onnxscript; opset 17 takes torchvision's
    # detector) and torch.jit: deprecated for torch.export, still what users ask for.
    with warnings.catch_warnings(), torch.no_grad():
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        if fmt == "onnx":
            torch.onnx.export(
                module,
                part.example,
                str(path),
                dynamo=False,
                input_names=list(part.inputs),
                output_names=list(part.outputs),
                dynamic_axes=part.dynamic,
                opset_version=17,
            )
        elif part.script:
            torch.jit.save(torch.jit.script(module), str(path))
        else:
            torch.jit.save(torch.jit.trace(module, part.example, check_trace=False), str(path))


def load_runner(path: str | os.PathLike, fmt: str, *, providers: Sequence[Any] = ("CPUExecutionProvider",)) -> Runner:
    """A written export as a function of CPU tensors (its inputs, in order) -> a CPU tensor, or
    a tuple of them when it has several outputs (onnxruntime for ONNX, with ``providers``: its
    execution providers, first choice first)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        names = [i.name for i in session.get_inputs()]

        def run_onnx(*xs: torch.Tensor) -> Any:
            feed = {name: x.detach().cpu().contiguous().numpy() for name, x in zip(names, xs)}
            out = tuple(torch.from_numpy(y) for y in session.run(None, feed))
            return out[0] if len(out) == 1 else out

        return run_onnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(*xs: torch.Tensor) -> Any:
        with torch.no_grad():
            return module(*xs)

    return run


def load_export(folder: str | os.PathLike) -> tuple[checkpoints.ModelConfig, Any]:
    """An export folder's config and what runs it: for one-part tasks a function of their input
    tensor (load_runner), an export_detection.ExportedDetector for detectors, an
    export_captioning.ExportedCaptioner for captioners."""
    config = checkpoints.load_config(folder)
    record = config.extra.get("export")
    if not isinstance(record, dict):
        raise InvalidInputError(f"{folder} holds no export (its config.json has no extra.export); run `cvtasks export`")
    runners = {name: load_runner(path, record["format"]) for name, path in export_files(folder, record).items()}
    return config, _exportable(config.task).assemble(runners, record)


def export_files(folder: str | os.PathLike, record: dict[str, Any]) -> dict[str, Path]:
    """Part name -> its file in ``folder``, from the export's config record (extra.export)."""
    parts = record.get("parts") or {"model": {"file": record["file"]}}  # exports written before parts were recorded
    return {name: Path(folder) / str(p["file"]) for name, p in parts.items()}


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
    return _refused_unless_agreed(worst)


def _refused_unless_agreed(worst: dict[str, float], *, minimums: bool = True) -> dict[str, float]:
    """``worst`` itself, or ExportError naming each figure over its tolerance or (``minimums``)
    under its minimum."""
    over = {k: v for k, v in worst.items() if k in TOLERANCES and v > TOLERANCES[k]}
    if over:
        detail = ", ".join(f"{k} {v:.3g} > {TOLERANCES[k]:g}" for k, v in over.items())
        raise ExportError(f"the export disagrees with the PyTorch model: {detail}")
    under = unmet_minimums(worst)
    if under and minimums:
        raise ExportError(f"the export could not be checked: {'; '.join(under)}")
    return worst


def unmet_minimums(figures: dict[str, float]) -> list[str]:
    """What a check's ``figures`` did not reach of ``MINIMUMS``, each with what to do about it."""
    return [f"{k} {figures[k]:g} < {low:g}: {hint}" for k, (low, hint) in MINIMUMS.items() if figures.get(k, low) < low]


def sample_images(config: checkpoints.ModelConfig, samples: str | os.PathLike | None = None) -> list[np.ndarray]:
    """RGB uint8 images for a parity check: the first MAX_SAMPLES images of the folder
    ``samples``, or synthetic shapes scenes: four at the model's side, one wider, one larger."""
    if samples is not None:
        paths = sorted(p for p in Path(samples).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_SAMPLES]
        if not paths:
            raise InvalidInputError(f"--samples {samples}: no images ({', '.join(IMAGE_SUFFIXES)}) in that folder")
        return [read_image(p) for p in paths]
    side = config.input_size or 128
    rng = np.random.default_rng(0)
    sizes = [(side, side)] * 4 + [(side * 3 // 4, side * 5 // 4), (side * 3 // 2, side * 5 // 4)]
    return [render(rng, size=max(h, w), max_shapes=3)[0][:h, :w].copy() for h, w in sizes]


def export_model(
    model_dir: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    *,
    samples: str | os.PathLike | None = None,
    minimums: bool = True,
) -> tuple[Path, dict[str, float]]:
    """Export the stored model in ``model_dir`` as ``fmt`` into the folder ``out`` (see the module
    docstring; ``samples``: a folder of images for a detector's or captioner's check;
    ``minimums=False``: keep an export whose check compared less than MINIMUMS, e.g. no box);
    returns (the folder, the parity figures)."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model, config = checkpoints.load_model(model_dir, device="cpu")
    spec = _exportable(config.task)
    images = sample_images(config, samples) if isinstance(spec, PartsExportable) else []
    parts = spec.parts(model.eval(), config)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    files = {part.name: target / f"{part.name}{SUFFIXES[fmt]}" for part in parts}
    try:
        for part in parts:
            _write(part.module(model).eval(), part, fmt, files[part.name])
        runners = {name: load_runner(path, fmt) for name, path in files.items()}
        parity = spec.check(model, runners, config, images, minimums=minimums)
    except Exception:
        for path in files.values():
            path.unlink(missing_ok=True)
        raise
    shutil.copyfile(Path(model_dir) / checkpoints.WEIGHTS_FILE, target / checkpoints.WEIGHTS_FILE)
    stored = {**config.to_json(), "extra": {**config.extra, "export": _record(fmt, parts, parity, spec.facts(model))}}
    (target / checkpoints.CONFIG_FILE).write_text(json.dumps(stored, indent=2) + "\n")
    return target, parity


def _record(fmt: str, parts: tuple[Part, ...], parity: dict[str, float], facts: dict[str, Any]) -> dict[str, Any]:
    """config.json's extra.export: every part as {file, inputs, outputs, dynamic_axes}; a one-part
    export also as file, input, output, dynamic_axes (of its input) at the top."""
    described = {
        p.name: {
            "file": f"{p.name}{SUFFIXES[fmt]}",
            "inputs": list(p.inputs),
            "outputs": list(p.outputs),
            "dynamic_axes": {name: {str(k): v for k, v in axes.items()} for name, axes in p.dynamic.items()},
        }
        for p in parts
    }
    record: dict[str, Any] = {"format": fmt}
    if len(parts) == 1:
        (only,) = parts
        record["file"] = described[only.name]["file"]
        if len(only.inputs) == len(only.outputs) == 1:
            axes = only.dynamic.get(only.inputs[0], {})
            record |= {
                "input": only.inputs[0],
                "output": only.outputs[0],
                "dynamic_axes": {str(k): v for k, v in axes.items()},
            }
    return {
        **record,
        "parts": described,
        **facts,
        "parity": parity,
        "tolerances": {k: TOLERANCES[k] for k in parity if k in TOLERANCES},
        "torch": torch.__version__,
    }
