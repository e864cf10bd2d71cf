"""The Ray Data engine (``cvtasks batch ... --engine ray``): the same job as the local engine, its
inference spread over a pool of Ray actors, on one machine or a cluster.

    read_binary_files ──> map_batches(_Predictor, actors) ──> driver: manifest.jsonl, progress
                            prepare, infer, record (per-image files)

Each actor rebuilds the task from ``task.spec()`` and loads the model once; it decodes, infers
and writes each input's per-image files (atomically) into the output folder, and hands back
the input's row as JSON text. The driver appends the rows to the manifest as batches arrive,
so the exactly-once contract of ``store`` holds as with the local engine, and it rebuilds the
results files with the same ``finish``: both engines write the same files, byte for byte.

On a cluster, every node needs cvtasks installed, and the inputs, the model folder and the
output folder at the same paths (a shared file system).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from models.batch.engine import Summary, failure_reason, finish, plan, progress_bar
from models.batch.job import BatchJob, job_from_spec
from models.batch.store import InputFile, Manifest
from models.isolation import Failure, run_isolated

Columns = dict[str, np.ndarray]  # one Ray Data batch in "numpy" format: column name -> values


def run_ray(
    task: BatchJob,
    model_dir: Path,
    inputs: Sequence[InputFile],
    manifest: Manifest,
    *,
    batch_size: int = 8,
    actors: int = 1,
    device: str | None = None,
    progress: bool = True,
) -> Summary:
    """Run every input of ``inputs`` not finished in ``manifest`` through ``task`` with the model
    stored in ``model_dir``, on ``actors`` Ray actors taking ``batch_size`` images at a time.

    ``device``: "cpu", or "cuda" (one GPU per actor, Ray picks which: "cuda:N" means "cuda"
    here); None takes a GPU per actor when the Ray cluster has GPUs. Uses the Ray instance this
    process is connected to, else ``ray.init()`` (which honours RAY_ADDRESS, else starts a local
    instance, shut down again at the end). Same contract and outputs as ``engine.run_local``:
    a bad input is a failed manifest record, never an exception; returns the summary.
    """
    if not task.task.takes_images:
        raise ValueError(f"{task.name} is not supported by --engine ray (it has no input files); use --engine local")
    if batch_size < 1 or actors < 1:
        raise ValueError(f"need batch_size >= 1 and actors >= 1, got {batch_size}, {actors}")
    ray = _import_ray()
    started = time.perf_counter()
    summary = Summary(manifest.out)
    todo = plan(inputs, manifest, summary)
    with progress_bar(len(todo), enabled=progress, desc=task.name) as bar:
        readable = [f for f in todo if f.path.is_file() and os.access(f.path, os.R_OK)]
        returned: set[str] = set()
        if readable:
            owned = _connect(ray)
            try:
                with _quiet_ray_data():
                    ds = _dataset(ray, task, model_dir, readable, batch_size=batch_size, actors=actors, device=device)
                    for records in _results(ds):
                        returned.update(r["key"] for r in records)
                        _append(manifest, summary, bar, records)
            finally:
                if owned:
                    ray.shutdown()
        _append(manifest, summary, bar, [_unread(f) for f in todo if f.key not in returned])
    return finish(task, manifest, summary, started)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--engine ray needs Ray Data ({exc}); install it with: pip install 'cvtasks[ray]'") from exc
    return ray


def _connect(ray: Any) -> bool:
    """Use the Ray instance this process is connected to, else ``ray.init()`` (RAY_ADDRESS, else a
    local instance); True when this call connected, so the caller shuts it down again."""
    if ray.is_initialized():
        return False
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return True


@contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's INFO lines (plan, timings) and its progress reports off while the job runs: ours
    is the progress bar. Its other warnings still show."""
    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    saved = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(max(logger.level, level))
    try:
        yield
    finally:
        for logger, level in saved.items():
            logger.setLevel(level)


def _dataset(
    ray: Any,
    task: BatchJob,
    model_dir: Path,
    files: Sequence[InputFile],
    *,
    batch_size: int,
    actors: int,
    device: str | None,
) -> Any:
    """The inputs' bytes through a pool of ``actors`` _Predictor actors: a Dataset of result columns."""
    gpu = _uses_gpu(ray, device, actors)
    paths = [os.path.abspath(f.path) for f in files]
    spec = {**task.spec(), "out": os.path.abspath(task.out.root)}  # workers may run in another folder
    predictor = {
        "spec": spec,
        "model_dir": os.path.abspath(model_dir),
        "device": "cuda" if gpu else device or "cpu",
        "keys": dict(zip(paths, (f.key for f in files))),
    }
    ds = ray.data.read_binary_files(paths, include_paths=True, ignore_missing_paths=True)
    ds = ds.map_batches(
        _Predictor,
        batch_size=batch_size,
        batch_format="numpy",
        num_gpus=1 if gpu else 0,
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs=predictor,
    )
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


def _uses_gpu(ray: Any, device: str | None, actors: int) -> bool:
    """Whether each actor takes a GPU: ``device`` CUDA, or None on a cluster with GPUs. Each actor
    also takes a CPU, and reading needs one more: a pool the cluster cannot hold is refused here,
    as Ray would wait for it forever."""
    have = ray.cluster_resources()
    gpus, cpus = have.get("GPU", 0), have.get("CPU", 0)
    gpu = gpus > 0 if device is None else device.startswith("cuda")
    if gpu and gpus < actors:
        raise ValueError(
            f"{actors} actor(s) on {device or 'cuda'} need {actors} GPU(s) but the Ray cluster has "
            f"{gpus:g}; pass fewer --actors, or --device cpu"
        )
    if cpus < actors + 1:
        fits = int(cpus) - 1
        raise ValueError(
            f"{actors} actor(s) take {actors} CPU(s) and reading the files one more, but the Ray "
            f"cluster has {cpus:g}; " + (f"pass --actors {fits} or fewer" if fits >= 1 else "give Ray 2 CPUs or more")
        )
    return gpu


def _results(ds: Any) -> Iterator[list[dict[str, Any]]]:
    """The manifest records of each result batch, as the batches arrive."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield [
            {"key": str(key), "status": "ok", "row": json.loads(row)}
            if status == "ok"
            else {"key": str(key), "status": "failed", "error": str(error)}
            for key, status, row, error in zip(batch["key"], batch["status"], batch["row"], batch["error"])
        ]


def _unread(f: InputFile) -> dict[str, Any]:
    """The failed record of an input that Ray did not read: gone since the listing, not a file, or
    not readable; the reason is the local engine's."""
    try:
        with open(f.path, "rb"):
            reason = "could not read the file: Ray Data did not return it"
    except OSError as exc:
        reason = failure_reason(exc)
    return {"key": f.key, "status": "failed", "error": reason}


def _append(manifest: Manifest, summary: Summary, bar: Any, records: list[dict[str, Any]]) -> None:
    manifest.append(records)
    failed = sum(r["status"] == "failed" for r in records)
    summary.processed += len(records) - failed
    summary.failed += failed
    if failed:
        bar.set_postfix(failed=summary.failed)
    bar.update(len(records))


class _Predictor:
    """One Ray actor: the task rebuilt from its spec, the model loaded once on ``device``.

    Called with a batch ``{"path", "bytes"}``; returns ``{"key", "status": "ok"|"failed", "row":
    the row as JSON text or "", "error": the reason or ""}``, one entry per input, having written
    the inputs' per-image files. A bad input fails alone; only a failed write raises.
    """

    def __init__(self, spec: Mapping[str, Any], model_dir: str, device: str, keys: Mapping[str, str]) -> None:
        from models.checkpoints import load_model
        from models.train.common import pick_device

        self.task, self.keys = job_from_spec(spec), keys
        self.model, _ = load_model(model_dir, device=pick_device(device))

    def __call__(self, batch: Columns) -> Columns:
        results: dict[str, tuple[str, str, str]] = {}
        ready = []
        for path, data in zip(batch["path"], batch["bytes"]):
            key = self.keys[os.path.abspath(str(path))]
            try:
                array, inputs = self.task.prepare(bytes(data))
            except Exception as exc:  # noqa: BLE001 — a bad input is recorded, the job goes on
                results[key] = ("failed", "", failure_reason(exc))
            else:
                ready.append((key, array, inputs))
        self._infer(ready, results)
        keys = list(results)
        return {
            "key": np.array(keys),
            **{name: np.array([results[k][i] for k in keys]) for i, name in enumerate(("status", "row", "error"))},
        }

    def _infer(self, batch: list[tuple[str, np.ndarray, Any]], results: dict[str, tuple[str, str, str]]) -> None:
        """As ``engine._infer``: the batch at once; when that fails, each input alone."""
        if not batch:
            return
        outputs = run_isolated(lambda inputs: self.task.infer(self.model, inputs), [x for _, _, x in batch])
        for (key, array, _), output in zip(batch, outputs):
            if isinstance(output, Failure):
                results[key] = ("failed", "", f"inference failed: {failure_reason(output.error)}")
                continue
            row = self.task.record(key, output, (int(array.shape[0]), int(array.shape[1])), array)
            results[key] = ("ok", json.dumps(row), "")
