"""The one training loop every task trains through, with the task-specific parts as hooks (the
split of torchvision's references/detection: an engine with ``train_one_epoch``, and per task
its data, model and evaluation).

A task (a ``TrainTask``) builds its datasets and networks, takes one training step and returns
its loss values, evaluates and returns metrics, names the metric that picks the best epoch, and
gives the stored config. The loop owns the rest: seeding, the device, the default optimiser and
warmup + cosine schedule, AMP, resume (``last.pt``), keeping the best model in the store, the
history plot, early stopping, progress bars, the per-epoch line, and DistributedDataParallel
under ``torchrun`` (distributed.py: rank 0 evaluates, prints and writes; every rank trains on its
shard of the training set).

Random numbers are drawn in one fixed order — seed, the task's ``build`` (augmentation, model
init), then per epoch the loader's shuffle and the steps' draws — so a recipe trains the same on
every run of one machine.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from models import checkpoints
from models.train import common
from models.train.distributed import Processes, close


@dataclass(frozen=True)
class Settings:
    """The loop's settings; ``Settings.of(cfg)`` takes them from a task's train config."""

    run_dir: str
    model_store: str
    name: str
    epochs: int
    batch_size: int  # per process
    lr: float
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    clip_grad: float | None = None  # gradient-norm clipping of the default step
    amp: bool = False  # mixed precision, used only on CUDA
    patience: int | None = None  # early stopping: epochs without a better best_metric (None: never)
    workers: int = 0  # data-loading worker processes
    device: str | None = None
    seed: int = 0
    resume: bool = False
    progress: bool = True

    @classmethod
    def of(cls, cfg: Any) -> Settings:
        """The fields of ``cfg`` (a train config dataclass) that share a name with one of these;
        the others keep their defaults here."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)})


@dataclass
class TrainData:
    """The training set and how to batch it (the loop makes the loader: shuffled, or sharded under DDP)."""

    dataset: Dataset
    collate_fn: Callable | None = None
    worker_init_fn: Callable | None = None
    drop_last: bool = True  # drop a smaller last batch, when there is more than one batch
    sampler: Sampler | None = None  # instead of shuffling (e.g. a weighted sampler); not under DDP


@dataclass
class Run:
    """What a step sees: the device, the networks to run forward passes through (DDP-wrapped
    when distributed), the optimisers, the AMP scaler, and where the loop is."""

    settings: Settings
    device: torch.device
    procs: Processes
    nets: dict[str, nn.Module]
    optimizers: dict[str, Any]
    scaler: torch.amp.GradScaler | None
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0  # 1-based within the epoch

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, enabled=self.scaler is not None)

    def update(self, loss: torch.Tensor) -> None:
        """The default optimiser step: backward, clip, step, advance the schedule."""
        common.optimizer_step(
            loss,
            self.optimizers["optimizer"],
            self.optimizers["scheduler"],
            self.scaler,
            clip_grad=self.settings.clip_grad,
        )


class TrainTask(ABC):
    """The hooks a task gives the loop. ``build`` runs first, right after seeding."""

    task: str = ""  # the stored model's task ("detection", ...)
    title: str = "{name}"  # of the history plot: a template over the train config's fields
    plot_file: str = "curves.png"
    best_metric: str | None = None  # picks the epoch kept in the store; None: keep every epoch
    higher_is_better: bool = True
    ddp_options: Mapping[str, Mapping[str, Any]] = {}  # DistributedDataParallel arguments per network

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg  # the task's train config (a models.train.config.RunConfig)

    @abstractmethod
    def build(self, device: torch.device, rank: int) -> TrainData:
        """Datasets and networks (on ``device``); ``rank`` (0 in a plain run) offsets augmentation seeds."""

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """The modules trained, saved and restored in last.pt by these names."""

    def train_modules(self) -> dict[str, nn.Module]:
        """The modules the steps run forward passes through: put in train mode each epoch, wrapped in DDP
        when distributed, in ``Run.nets`` by these names. Default: ``networks``; a task whose loss is
        not its network's forward wraps the network in a module whose forward is the loss."""
        return self.networks()

    def optimizers(self, settings: Settings, steps_per_epoch: int) -> dict[str, Any]:
        """The optimisers and schedules, by their names in last.pt. Default: ``optimizer`` (settings.optimizer
        over the ``model`` network) and ``scheduler`` (warmup + cosine over all steps), used by ``Run.update``."""
        optimizer = common.build_optimizer(
            self.networks()["model"].parameters(),
            name=settings.optimizer,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
        )
        scheduler = common.warmup_cosine(
            optimizer, warmup_steps=settings.warmup_steps, total_steps=settings.epochs * steps_per_epoch
        )
        return {"optimizer": optimizer, "scheduler": scheduler}

    def extra_parts(self) -> dict[str, Any]:
        """More objects with ``state_dict`` for last.pt (e.g. a weight average)."""
        return {}

    def begin_epoch(self, run: Run) -> None:  # noqa: B027 (an optional hook)
        """Before each epoch's first step (e.g. set a learning rate)."""

    @abstractmethod
    def step(self, batch: Any, run: Run) -> dict[str, float]:
        """One training step on ``batch``; returns its loss values (the epoch's history is their mean)."""

    @abstractmethod
    def evaluate(self, run: Run) -> dict[str, float]:
        """Validation metrics after an epoch (main process only)."""

    @abstractmethod
    def epoch_line(self, losses: dict[str, float], metrics: dict[str, float]) -> str:
        """What follows ``epoch E/N: `` in the line printed after each epoch."""

    def model_config(self, version: str, metrics: Mapping[str, float], **fields: Any) -> checkpoints.ModelConfig:
        """The config ``stored`` returns: the run's name, ``task``, ``version`` and ``metrics``, the side it
        trained at (the config's ``image_size``, unless ``input_size`` is given), no classes unless
        given, the train config in ``extra`` (beside ``extra`` given), and ``fields``."""
        extra = {**fields.pop("extra", {}), "train_config": asdict(self.cfg)}
        fields = {"classes": (), "input_size": getattr(self.cfg, "image_size", None), **fields}
        return checkpoints.ModelConfig(
            name=self.cfg.name, task=self.task, version=version, metrics=dict(metrics), extra=extra, **fields
        )

    @abstractmethod
    def stored(self, metrics: dict[str, float], version: str, epoch: int) -> tuple[nn.Module, checkpoints.ModelConfig]:
        """The module to put in the model store and its config."""


@dataclass
class Progress:
    """Where training stands: rank 0's copy is shared with the others after every epoch."""

    best: float
    version: str
    history: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stale: int = 0  # epochs since the best one
    start_epoch: int = 1


@dataclass
class Outcome:
    """What a finished run left: the stored model, the run folder and its plot, the per-epoch
    history, the best epoch's ``best_metric``, whether patience ran out, and the wall time."""

    model_dir: Path
    run_dir: Path
    plot: Path
    history: dict[str, list[float]]
    best: float
    stopped_early: bool
    seconds: float

    @property
    def metrics(self) -> dict[str, float]:
        """The stored model's validation metrics (of its best epoch); {} when nothing was stored."""
        stored = self.model_dir / checkpoints.CONFIG_FILE
        return dict(checkpoints.load_config(self.model_dir).metrics) if stored.is_file() else {}


def fit(task: TrainTask, settings: Settings) -> Outcome:
    """Train ``task`` for ``settings.epochs`` (or until ``patience`` runs out) in this process, or
    in each of the processes torchrun started."""
    started = time.perf_counter()
    procs = Processes.from_environment()
    device, own_group = procs.start(settings.device)
    try:
        return _fit(task, settings, procs, device, started)
    finally:
        close(own_group)


def _fit(task: TrainTask, settings: Settings, procs: Processes, device: torch.device, started: float) -> Outcome:
    common.seed_everything(settings.seed)
    run_dir = Path(settings.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    loader, sampler = make_loader(task.build(device, procs.rank), settings, procs)
    scaler = torch.amp.GradScaler("cuda") if settings.amp and device.type == "cuda" else None
    optimizers = task.optimizers(settings, len(loader))
    run = Run(
        settings,
        device,
        procs,
        procs.wrap(task.train_modules(), device, task.ddp_options),
        optimizers,
        scaler,
        len(loader),
    )
    parts = {**task.networks(), **optimizers, **task.extra_parts()}
    progress = _start(task, settings, parts)
    procs.seed_apart(settings.seed)
    for epoch in range(progress.start_epoch, settings.epochs + 1):
        run.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        task.begin_epoch(run)
        losses = train_one_epoch(task, loader, run)
        procs.sync_buffers([p for p in parts.values() if isinstance(p, nn.Module)])
        if procs.main:
            _end_epoch(task, run, progress, parts, losses)
        progress = procs.share(progress)
        if _out_of_patience(settings, progress):
            break
    procs.barrier()  # rank 0's last files are written before any process returns
    return Outcome(
        model_dir=Path(settings.model_store) / settings.name,
        run_dir=run_dir,
        plot=run_dir / task.plot_file,
        history=dict(progress.history),
        best=progress.best,
        stopped_early=_out_of_patience(settings, progress),
        seconds=time.perf_counter() - started,
    )


def make_loader(data: TrainData, settings: Settings, procs: Processes) -> tuple[DataLoader, DistributedSampler | None]:
    """Shuffled batches of the training set; under DDP, of this process's shard (DistributedSampler,
    reshuffled each epoch by ``set_epoch``)."""
    sampler, size = None, len(data.dataset)
    if procs.distributed and data.sampler is not None:
        raise ValueError("a task's own sampler (e.g. a weighted sampler) does not shard: train it in one process")
    if procs.distributed:
        sampler = DistributedSampler(
            data.dataset, num_replicas=procs.world_size, rank=procs.rank, shuffle=True, seed=settings.seed
        )
        size = len(sampler)
    loader = DataLoader(
        data.dataset,
        batch_size=settings.batch_size,
        shuffle=sampler is None and data.sampler is None,
        sampler=sampler or data.sampler,
        collate_fn=data.collate_fn,
        num_workers=settings.workers,
        drop_last=data.drop_last and size > settings.batch_size,
        worker_init_fn=data.worker_init_fn,
    )
    return loader, sampler


def _start(task: TrainTask, settings: Settings, parts: dict[str, Any]) -> Progress:
    """A fresh start, or (``resume`` with a last.pt) where the last run stopped. One store version per
    training run; a resumed run keeps the version it started with."""
    first_best = 0.0 if task.best_metric is None else (-1.0 if task.higher_is_better else math.inf)
    progress = Progress(best=first_best, version=checkpoints.next_version(settings.model_store, settings.name))
    if settings.resume and (state := common.load_resume_state(Path(settings.run_dir))) is not None:
        progress.start_epoch, progress.best, progress.version = common.restore_parts(
            state, parts, history=progress.history
        )
        values = progress.history.get(task.best_metric or "", [])
        if values:
            pick = max if task.higher_is_better else min
            progress.stale = len(values) - 1 - pick(range(len(values)), key=values.__getitem__)
    return progress


def train_one_epoch(task: TrainTask, loader: DataLoader, run: Run) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each value the steps return (over all processes)."""
    for net in run.nets.values():
        net.train()
    sums: dict[str, float] = defaultdict(float)
    shown = run.procs.main and run.settings.progress
    bar = tqdm(loader, desc=f"epoch {run.epoch}", leave=False, disable=None if shown else True)
    for step, batch in enumerate(bar, 1):
        run.step = step
        for key, value in task.step(batch, run).items():
            sums[key] += value
        if "loss" in sums:
            bar.set_postfix(loss=f"{sums['loss'] / step:.3f}")
    return run.procs.mean({k: v / max(1, len(loader)) for k, v in sums.items()}, run.device)


def _end_epoch(task: TrainTask, run: Run, progress: Progress, parts: dict[str, Any], losses: dict[str, float]) -> None:
    """Evaluate; record and print; keep the best model; write last.pt and the plot (main process)."""
    settings, epoch = run.settings, run.epoch
    metrics = task.evaluate(run)
    for key, value in {**losses, **metrics}.items():
        progress.history[key].append(value)
    if settings.progress:
        print(f"epoch {epoch}/{settings.epochs}: {task.epoch_line(losses, metrics)}", flush=True)
    if _improved(task, progress, metrics):
        module, config = task.stored(metrics, progress.version, epoch)
        checkpoints.save_model(module, config, Path(settings.model_store) / settings.name)
    run_dir = Path(settings.run_dir)
    common.save_parts(
        run_dir, parts, epoch=epoch, history=progress.history, best=progress.best, version=progress.version
    )
    common.plot_history(progress.history, run_dir / task.plot_file, title=task.title.format_map(vars(task.cfg)))


def _out_of_patience(settings: Settings, progress: Progress) -> bool:
    return settings.patience is not None and progress.stale >= settings.patience


def _improved(task: TrainTask, progress: Progress, metrics: dict[str, float]) -> bool:
    """Whether this epoch is the best so far (always, without a best_metric); counts stale epochs."""
    if task.best_metric is None:
        return True
    value = metrics[task.best_metric]
    if value > progress.best if task.higher_is_better else value < progress.best:
        progress.best, progress.stale = value, 0
        return True
    progress.stale += 1
    return False
