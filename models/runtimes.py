"""How a served model runs: a runtime (eager PyTorch, torch.compile, or onnxruntime on its ONNX
export) and a precision (fp32, or bf16/fp16 autocast), chosen per model.

    choice = choice_for(config, RuntimeChoice("onnxruntime"))  # config.json extra.serving wins
    served = serve_with(model, config, folder, device, choice, cache=Path("/tmp/cvtasks-exports"))

``serve_with`` changes the loaded model in place and nothing else: the methods of it that the
task's export covers have their answers taken over by ``RuntimeForward``s. For one-part exports
(models/export.py ``Exportable``: the classifier or segmenter itself, the DCGAN generator's
``.net``) that is the part's ``forward``. For parts exports (``PartsExportable``, ``TAKEN_OVER``)
it is what the export's ``assemble`` makes of its parts: the detector's ``forward`` answered by an
``ExportedDetector`` (the one-image graph, image by image, resized in Python), the captioner's
``start`` and ``step`` by an ``ExportedCaptioner`` (encoder and step graphs). The task code
(``run_batch``, padding, tiling, the generator's shape checks, ``detection.predict_with``,
``captioning.beam_search``) calls the model as before and does not know which runtime answers. What
a runtime cannot run stays in PyTorch around it: a call with gradients on (Grad-CAM's ``explain``,
training) runs the eager method, and the model's weights stay loaded for it.

One-part tasks get ``compiled`` and ``onnxruntime`` (at any precision the device has, onnxruntime at
fp32), provided the module their entry exports is the served model or one of its submodules.
Detectors and captioners get ``onnxruntime`` at fp32; ``compiled`` is refused, saying why
(``NOT_COMPILED``). The ONNX files come from one place for both kinds: the model folder's
own export (config.json ``extra.export``) or one made at load under the export cache.

Before a model serves, each runtime is checked against the eager model: one-part exports on the
export's sample inputs (two batch sizes, two image sizes: ``check_parity``), parts exports by their
own check (``PartsExportable.check``) on synthetic shapes scenes at the model's size
(``export.sample_images``). At fp32 a disagreement beyond ``TOLERANCES`` fails the load; a
detector that finds no box to compare only warns (``_check_parts``). That also compiles the shapes
the server will see first, and a compiled model compiles nothing after it (``_run_only``): an input
its graphs from load do not fit (another image size, say) runs eager at once instead of stalling
the model's batcher for minutes of compiling.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from models import checkpoints
from models.export import (
    EXPORTABLE,
    Exportable,
    PartsExportable,
    check_parity,
    export_files,
    export_model,
    load_runner,
    sample_images,
    unmet_minimums,
)

log = logging.getLogger("cvtasks.runtimes")

RUNTIMES = ("eager", "compiled", "onnxruntime")
RECOMPILE_LIMIT = 64  # graphs of one code object (see _torch_runners)
PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
CONFIG_KEY = "serving"  # config.json: "extra": {"serving": {"runtime": "onnxruntime", "precision": "fp32"}}
# Tasks whose convolutions run channels-last on eager and compiled. Empty for now: in one run on the
# loaded 2-core CPU it made the eager classifier 4x slower and the compiled one 7.7x faster (README,
# runtimes table), the U-Net 1.6x faster on both; single loaded runs, so not turned on yet.
CHANNELS_LAST: frozenset[str] = frozenset()


class RuntimeChoiceError(ValueError):
    """A runtime or precision this model, task or device cannot serve with; says what can."""


@dataclass(frozen=True)
class RuntimeChoice:
    """How one model is served: ``runtime`` in RUNTIMES, ``precision`` in PRECISIONS."""

    runtime: str = "eager"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise RuntimeChoiceError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            raise RuntimeChoiceError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")


def choice_for(config: checkpoints.ModelConfig, default: RuntimeChoice) -> RuntimeChoice:
    """``default`` (the server's) with what the model's config.json sets in ``extra.serving``
    (``runtime``, ``precision``) instead; RuntimeChoiceError for anything else there."""
    stored = config.extra.get(CONFIG_KEY, {})
    if not isinstance(stored, dict) or set(stored) - {"runtime", "precision"}:
        raise RuntimeChoiceError(
            f'extra.{CONFIG_KEY} must be an object with "runtime" and/or "precision", got {str(stored)[:100]}'
        )
    return RuntimeChoice(stored.get("runtime", default.runtime), stored.get("precision", default.precision))


def runtimes_for(task: str) -> tuple[str, ...]:
    """The runtimes a task's models can serve with."""
    if _one_part(task):
        return RUNTIMES
    return ("eager", "onnxruntime") if task in TAKEN_OVER else ("eager",)


def _one_part(task: str) -> bool:
    """Whether the task's export is one module of the model, a function of one tensor, whose
    forward a runtime takes over; detectors and captioners have methods of theirs taken over
    by their parts' export assembled (TAKEN_OVER)."""
    return isinstance(EXPORTABLE.get(task), Exportable)


# Parts exports: what each of the model's methods is answered by, of the assembled export (its
# PartsExportable.assemble): the detector's forward by an ExportedDetector (a list of images ->
# one dict per image, as torchvision's model in inference); the captioner's start and step by
# an ExportedCaptioner's. The task code calls those methods as before (detection.predict_with,
# captioning.beam_search).
TAKEN_OVER: dict[str, dict[str, Callable[[Any], Callable[..., Any]]]] = {
    "detection": {"forward": lambda exported: exported},
    "captioning": {"start": lambda exported: exported.start, "step": lambda exported: exported.step},
}
# Why a parts task has no compiled runtime (see the README's runtimes section).
NOT_COMPILED = {
    "detection": (
        "torch.compile of a Faster R-CNN breaks its graph 15 times (at nonzero and NMS, whose output "
        "shapes depend on the data), and its first compiled call had not finished after 5 minutes on the "
        "2-core CPU (the tiny detector, one loaded run)"
    ),
    "captioning": (
        "not offered yet, not measured: a captioner's start and step are small calls inside a Python "
        "decoding loop, where torch.compile's per-call guards weigh most"
    ),
}


def check_task(task: str, choice: RuntimeChoice) -> None:
    """RuntimeChoiceError when ``task``'s models cannot serve with ``choice``, saying what can."""
    if choice.runtime in runtimes_for(task) and (_one_part(task) or choice.precision == "fp32"):
        return
    how = (
        f"serve them with --runtime {' or '.join(runtimes_for(task))}"
        + ("" if _one_part(task) else " at fp32")
        + f', or set "extra": {{"{CONFIG_KEY}": {{"runtime": "eager"}}}} in their config.json'
    )
    if choice.runtime == "compiled" and task in NOT_COMPILED:
        raise RuntimeChoiceError(f"{task} models do not serve compiled: {NOT_COMPILED[task]}; {how}")
    if choice.runtime not in runtimes_for(task):
        raise RuntimeChoiceError(f"{task} models serve with the {' or '.join(runtimes_for(task))} runtime only; {how}")
    raise RuntimeChoiceError(
        f"{task} models serve at fp32 only: onnxruntime runs their fp32 export, and autocast of their "
        f"eager calls (TAKEN_OVER) is not offered, not having been measured or checked; {how}"
    )


def check_device(choice: RuntimeChoice, device: torch.device) -> None:
    """RuntimeChoiceError when ``device`` cannot run ``choice``'s precision (fp16 on the CPU; bf16 on a
    GPU without it; anything but fp32 under onnxruntime)."""
    if choice.precision == "fp32":
        return
    if choice.runtime == "onnxruntime":
        raise RuntimeChoiceError(
            f"the onnxruntime runtime runs the fp32 ONNX export; for {choice.precision} choose the "
            "eager or compiled runtime, or serve onnxruntime at fp32"
        )
    if device.type == "cpu" and choice.precision == "fp16":
        raise RuntimeChoiceError("fp16 autocast runs on CUDA only; on the CPU serve bf16 or fp32")
    if device.type == "cuda" and choice.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise RuntimeChoiceError(f"{device} has no bf16 support; serve fp16 or fp32 there")


@dataclass(frozen=True)
class Served:
    """What ``serve_with`` set up: the choice, and a word on how (the provider, the export used)."""

    runtime: str
    precision: str
    detail: str = ""


class RuntimeForward:
    """Takes over one method of a module (its ``forward``, or a captioner's ``start`` / ``step``):
    inference calls run ``fast`` (under autocast when a precision asks for it, inputs channels-last
    when asked), with floating outputs back in float32; a call with gradients on runs the module's
    own method (no runtime here gives gradients)."""

    def __init__(
        self,
        part: nn.Module,
        fast: Callable[..., Any],
        served: Served,
        *,
        device_type: str,
        channels_last: bool = False,
        method: str = "forward",
    ) -> None:
        self.eager = _class_method(part, method)  # bound: not this object, once it is set on the part
        self.fast, self.served, self.device_type, self.channels_last = fast, served, device_type, channels_last
        self.dtype = AUTOCAST.get(served.precision)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return self.eager(*args, **kwargs)
        if self.channels_last:
            args = tuple(_channels_last(a) for a in args)
        if self.dtype is None:
            return self.fast(*args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.fast(*args, **kwargs)
        return tree_map(_as_float32, out)


def _class_method(module: nn.Module, method: str = "forward") -> Callable[..., Any]:
    """``module``'s class's ``method`` bound to it: what it answers whatever is set on the instance."""
    return getattr(type(module), method).__get__(module)


def _channels_last(x: Any) -> Any:
    return x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x


def _as_float32(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in (torch.bfloat16, torch.float16) else x


def served_part(model: nn.Module, task: str) -> nn.Module:
    """The module whose methods a runtime takes over: the one a one-part export covers, a part of
    ``model``; for parts exports (TAKEN_OVER) the model itself."""
    if task in TAKEN_OVER:
        return model
    if not _one_part(task):
        check_task(task, RuntimeChoice("onnxruntime"))  # raises, saying what can serve it
    part = EXPORTABLE[task].module(model)
    if not any(part is m for m in model.modules()):
        raise RuntimeChoiceError(
            f"the {task} export covers a module built around the model, not a part of it; a runtime "
            "cannot take over its forward (models/runtimes.py needs an entry for it)"
        )
    return part


def serve_with(
    model: nn.Module,
    config: checkpoints.ModelConfig,
    folder: Path,
    device: torch.device,
    choice: RuntimeChoice,
    *,
    cache: Path,
    channels_last: bool | None = None,
) -> Served:
    """Set ``model`` (loaded from ``folder``, on ``device``, in eval mode) up to run as ``choice``
    says, checked against its eager forward (see the module docstring). ONNX exports are taken
    from ``folder`` when its config.json has one (``extra.export``), else made under ``cache``.
    ``channels_last``: run the part's convolutions channels-last (eager and compiled only)."""
    check_device(choice, device)
    if device.type == "cpu" and choice.precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("this CPU has no native bf16 (AVX512-BF16 or AMX): %s runs emulated, slower than fp32", config.name)
    if channels_last is None:  # the measured default (CHANNELS_LAST); benchmarks try both
        channels_last = config.task in CHANNELS_LAST
    channels_last = channels_last and choice.runtime != "onnxruntime" and _one_part(config.task)
    if choice == RuntimeChoice() and not channels_last:
        return Served("eager", "fp32")  # today's path, untouched
    check_task(config.task, choice)
    part = served_part(model, config.task)
    if channels_last:
        part.to(memory_format=torch.channels_last)
    spec = EXPORTABLE[config.task]
    runners, record, detail = _runners(model, config, folder, device, choice, cache)
    served = Served(choice.runtime, choice.precision, detail)
    exported = spec.assemble(runners, record)  # the runners, or an ExportedDetector / ExportedCaptioner
    how = {"device_type": device.type, "channels_last": channels_last}
    forwards = {
        name: RuntimeForward(part, answer(exported), served, method=name, **how)
        for name, answer in TAKEN_OVER.get(config.task, {"forward": lambda run: run}).items()
    }
    if isinstance(spec, Exportable):
        _check(forwards["forward"], config, device, served)
    else:
        _check_parts(model, spec, runners, config)
    if choice.runtime == "compiled":
        for forward in forwards.values():
            forward.fast = _run_only(forward.fast)
    for name, forward in forwards.items():
        setattr(part, name, forward)  # an instance attribute: nn.Module (and the task code) call it
    log.info("runtime set up", extra={"model": config.name, "runtime": choice.runtime, "precision": choice.precision})
    return served


def _runners(
    model: nn.Module, config: Any, folder: Path, device: torch.device, choice: RuntimeChoice, cache: Path
) -> tuple[dict[str, Callable[..., Any]], dict[str, Any], str]:
    """What runs each part of the task's export under ``choice.runtime``, the export's record (what
    its ``assemble`` reads: a detector's sizes) and a word on it."""
    spec = EXPORTABLE[config.task]
    if choice.runtime == "onnxruntime":
        return _onnx_runners(folder, config, device, cache)
    compiled = choice.runtime == "compiled"
    return _torch_runners(model, config, spec, compiled=compiled), spec.facts(model), "inductor" if compiled else ""


def _torch_runners(model: nn.Module, config: Any, spec: Any, *, compiled: bool) -> dict[str, Callable[..., Any]]:
    """The export's parts as PyTorch runs them (compiled by inductor, or not): each part's class
    forward, so that a part which is the served module itself (a one-part export) keeps answering
    eagerly, whatever is set on it."""
    runners = {p.name: _class_method(p.module(model).eval()) for p in spec.parts(model, config)}
    if not compiled:
        return runners
    # Dynamo keeps graphs per code object: every compiled model of one class (every DCGAN's
    # nn.Sequential.forward) shares one limit, 8 by default, past which it silently runs eager.
    # Compiling happens at load only (_run_only), a few graphs a model, so the limit can be higher.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return {name: torch.compile(run, dynamic=True) for name, run in runners.items()}


def _run_only(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """``compiled`` (torch.compile'd) that never compiles again: a call its graphs from load fit runs
    them, any other runs eager at once. A shape the check did not compile would otherwise stall the
    model's batcher while inductor compiles (1-5 min for the tiny U-Net on the 2-core CPU, whose timm
    encoder specialises on image sizes), and dynamo's recompile limit would silently end compiling."""
    return torch._dynamo.run(compiled)


def _check(forward: RuntimeForward, config: Any, device: torch.device, served: Served) -> None:
    """Run ``forward`` beside the eager part on the export's samples (compiling their shapes); at
    fp32 a disagreement beyond the export's TOLERANCES raises ExportError."""
    spec = EXPORTABLE[config.task]
    assert isinstance(spec, Exportable)  # served_part admitted only one-part exports

    def on(run: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: run(x.to(device)).float().cpu()

    if served.precision == "fp32":
        check_parity(on(forward.eager), on(forward), spec, config)  # type: ignore[arg-type]
        return
    with torch.no_grad():  # lower precision: its own bounds are the tests'; here it only warms up
        for side in sorted(set(spec.sizes(config))):
            for batch in (1, 3):
                forward(spec.sample(config, batch, side).to(device))


def _check_parts(model: nn.Module, spec: PartsExportable, runners: dict[str, Any], config: Any) -> None:
    """The export's own check (PartsExportable.check: the eager model beside the runners on synthetic
    shapes scenes at the model's size, export.sample_images), ExportError beyond TOLERANCES. A
    detector that finds no box in them (a random-weight or barely trained one) is not refused: at
    serving the check is the runtime's, not the model's, and with no box to compare it still compared
    the RPN and heads up to the score cut; it only warns, where an export (`cvtasks export`) fails."""
    figures = spec.check(model, runners, config, sample_images(config), minimums=False)
    for unmet in unmet_minimums(figures):
        log.warning("%s: the runtime's check at load compared too little: %s", config.name, unmet)


def _onnx_runners(
    folder: Path, config: checkpoints.ModelConfig, device: torch.device, cache: Path
) -> tuple[dict[str, Callable[..., Any]], dict[str, Any], str]:
    """The model's ONNX export under onnxruntime (CUDA's provider on a CUDA device when this
    onnxruntime has it, else the CPU's): each part as a function of tensors on ``device``, with its
    outputs back there; the export's config record; and a word on it."""
    import onnxruntime

    where, record = _onnx_export(folder, config, cache)
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    else:
        if device.type == "cuda":
            log.warning("onnxruntime has no CUDA provider here (onnxruntime-gpu has): %s runs on the CPU", config.name)
        providers = ["CPUExecutionProvider"]
    files = export_files(where, record)
    runners = {name: _on(device, load_runner(path, "onnx", providers=providers)) for name, path in files.items()}
    used = providers[0] if isinstance(providers[0], str) else providers[0][0]
    return runners, record, f"{used}, {where.name}/{'+'.join(p.name for p in files.values())}"


def _on(device: torch.device, run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` (CPU tensors in and out) with its outputs on ``device``."""
    return lambda *xs: tree_map(lambda y: y.to(device) if isinstance(y, torch.Tensor) else y, run(*xs))


def _onnx_export(folder: Path, config: checkpoints.ModelConfig, cache: Path) -> tuple[Path, dict[str, Any]]:
    """The folder of an ONNX export of these weights and its record (config.json extra.export):
    ``folder`` itself when its config.json records one whose files are there, else the cached
    export under ``cache`` (made, with its parity check, on first use)."""
    record = config.extra.get("export") or {}
    if record.get("format") == "onnx" and all(p.is_file() for p in export_files(folder, record).values()):
        return folder, record
    target = cache / f"{config.name}-{_weights_key(folder)}"
    if not (target / checkpoints.CONFIG_FILE).is_file():
        cache.mkdir(parents=True, exist_ok=True)
        scratch = cache / f".{target.name}-{uuid.uuid4().hex[:8]}"
        try:
            export_model(folder, "onnx", scratch, minimums=False)  # its boxes: _check_parts warns
            os.replace(scratch, target)  # another process may have made it meanwhile: keep theirs
        except OSError:
            if not (target / checkpoints.CONFIG_FILE).is_file():
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("exported to ONNX for serving", extra={"model": config.name, "export": str(target)})
    return target, checkpoints.load_config(target).extra["export"]


def _weights_key(folder: Path) -> str:
    """What the export depends on: the weights, the config and the torch version."""
    digest = hashlib.sha256(torch.__version__.encode())
    for name in (checkpoints.WEIGHTS_FILE, checkpoints.CONFIG_FILE):
        with (folder / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
