"""The training loop under DistributedDataParallel: two CPU processes (gloo) train on halves of the
data, end with one state, and only rank 0 prints and writes; `cvtasks train` runs under torchrun."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp

from models import checkpoints
from models.train import common, loop
from models.train.generation import GenerationTask, GenerationTrainConfig
from tests.e2e.cli_server import ENV


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _digests(module: torch.nn.Module) -> dict[str, str]:
    """sha256 of every tensor of ``module``'s state dict (parameters and buffers)."""
    return {
        name: hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()
        for name, tensor in module.state_dict().items()
    }


def _train_gan(rank: int, world_size: int, ports: list[int], cfg: GenerationTrainConfig, out: str) -> None:
    """One process: 1 epoch, then resume to 2 (a new process group each time); writes its state's digests."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    for port, epochs, resume in ((ports[0], 1, False), (ports[1], 2, True)):
        os.environ["MASTER_PORT"] = str(port)
        task = GenerationTask(dataclasses.replace(cfg, epochs=epochs, resume=resume))
        outcome = loop.fit(task, loop.Settings.of(task.cfg))
    parts = {**task.networks(), "generator_ema": task.average}
    report = {
        "digests": {name: _digests(part) for name, part in parts.items()},
        "history": outcome.history,
        "grid": str(task.grid),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def test_two_processes_train_halves_of_the_data_and_end_with_one_state(shapes_dir, tmp_path):
    cfg = GenerationTrainConfig(
        images=str(shapes_dir / "images" / "val"),
        run_dir=str(tmp_path / "run"),
        model_store=str(tmp_path / "store"),
        name="gan",
        image_size=32,
        nz=16,
        ngf=8,
        ndf=8,
        batch_size=4,
        sample_count=4,
        ema_decay=0.9,
        augment="translation,color",
        progress=False,
    )
    mp.spawn(_train_gan, args=(2, [_free_port(), _free_port()], cfg, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # weights, batch-norm buffers and the weight average alike on both, and as rank 0 stored them
    assert ranks[0]["digests"] == ranks[1]["digests"]
    stored, config = checkpoints.load_model(tmp_path / "store" / "gan")
    assert _digests(stored) == ranks[1]["digests"]["generator_ema"] and config.extra["epochs_trained"] == 2
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]["g_loss"]) == 2
    # each process took a batch of 4 from its 12 of the 24 images: 3 steps an epoch, not one process's 6
    state = common.load_resume_state(tmp_path / "run")
    assert state["epoch"] == 2 and [int(state[k]["state"][0]["step"]) for k in ("opt_g", "opt_d")] == [6, 6]
    assert ranks[0]["grid"].endswith("epoch_002.png") and (tmp_path / "run" / "samples" / "epoch_002.png").is_file()
    assert ranks[1]["grid"] == "None"  # rank 1 drew no sample grid: only rank 0 writes files


def test_cli_train_runs_under_torchrun_and_only_rank_0_reports(shapes_dir, tmp_path):
    store, run = tmp_path / "store", tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "services.cli",
        "train",
        "segmentation",
        "--train-images",
        str(shapes_dir / "images" / "val"),
        "--train-masks",
        str(shapes_dir / "masks" / "val"),
        "--val-images",
        str(shapes_dir / "images" / "test"),
        "--val-masks",
        str(shapes_dir / "masks" / "test"),
        "--classes",
        str(shapes_dir / "classes.txt"),
        "--name",
        "ddp-seg",
        "--arch",
        "unet",
        "--encoder",
        "tu-mobilenetv3_small_100",
        "--model-args",
        '{"decoder_channels": [32, 16, 16, 8, 8]}',
        "--model-store",
        str(store),
        "--run-dir",
        str(run),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--warmup-steps",
        "1",
        "--device",
        "cpu",
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**ENV, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("epoch 1/1: loss") == 1 and out.stdout.count('"model":') == 1, out.stdout
    report = json.loads(out.stdout[out.stdout.index("{") :])
    assert report["model"] == str(store / "ddp-seg") and set(report["metrics"]) == {"mIoU", "pixel_accuracy"}
    history = json.loads((run / "history.json").read_text())
    assert len(history["mIoU"]) == 1 and history["mIoU"][0] == report["metrics"]["mIoU"]
    state = common.load_resume_state(run)
    assert int(state["optimizer"]["state"][0]["step"]) == 3  # 12 of the 24 images per process, batches of 4
