"""`cvtasks data synth --task classification`, `train/eval classification`, `cvtasks classify` and
`cvtasks batch classification` (local and through a server) as a user runs them."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest

from tests.e2e.cli_server import CLI, ENV, cli_server


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic ImageFolder data and a tiny classifier trained on it for 2 epochs: (data, store)."""
    root = tmp_path_factory.mktemp("cli-cls")
    data, store = root / "data", root / "store"
    made = _cli("data", "synth", "--task", "classification", "--out", data, "--train", 60, "--val", 12, "--test", 12)
    assert made.returncode == 0, made.stderr
    assert sum(json.loads(made.stdout)["test"].values()) == 12
    args = ["--data", data, "--name", "cli-cls", "--arch", "classifier_tiny", "--model-args", '{"widths": [8, 16, 32]}']
    args += ["--image-size", 32, "--batch-size", 16, "--epochs", 2, "--warmup-steps", 2, "--label-smoothing", 0.1]
    args += ["--balance", "sampler", "--model-store", store, "--run-dir", root / "run"]
    trained = _cli("train", "classification", *args)
    assert trained.returncode == 0, trained.stderr
    assert "epoch 2/2" in trained.stdout and json.loads(trained.stdout[trained.stdout.index("{") :])["metrics"]
    return data, store


def test_train_writes_a_model_and_eval_reports_every_metric(trained, tmp_path):
    data, store = trained
    config = json.loads((store / "cli-cls" / "config.json").read_text())
    assert config["task"] == "classification" and config["classes"] == ["circle", "square", "triangle"]
    assert config["input_size"] == 32 and "top1" in config["metrics"]
    ev = _cli("eval", "classification", "--model", "cli-cls", "--model-store", store, "--data", data, "--out", tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert "top-1" in ev.stdout and "true \\ pred" in ev.stdout and "precision" in ev.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == 12 and metrics["images"] == 12
    assert metrics["top1"] == pytest.approx(np.trace(confusion) / 12) and metrics["top5"] == 1.0
    assert set(metrics["f1"]) == {"circle", "square", "triangle"}
    assert 0.0 <= metrics["ece"] <= 1.0 and f"{metrics['ece']:.4f}" in ev.stdout and metrics["ece_bins"] == 15
    assert sum(b["count"] for b in metrics["reliability"]) == 12
    for png in ("confusion.png", "reliability.png", "mistakes.png"):
        assert cv2.imread(str(tmp_path / png)) is not None, png


def test_classify_and_batch_local_and_remote_agree(trained, tmp_path):
    data, store = trained
    images = sorted((data / "images" / "test").rglob("*.png"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, path in enumerate(images):
        (folder / f"{i}.png").write_bytes(path.read_bytes())
    local = _cli("batch", "classification", folder, "--out", tmp_path / "local", "--model-store", store, "--top-k", 2)
    assert local.returncode == 0, local.stderr
    with cli_server("classification", store, tmp_path) as (_, address):
        out = _cli(
            "classify", *folder.glob("*.png"), "--server", address, "--top-k", 2, "--output", tmp_path / "c.json"
        )
        assert out.returncode == 0, out.stderr
        remote = _cli(
            "batch", "classification", folder, "--out", tmp_path / "remote", "--server", address, "--top-k", 2
        )
        assert remote.returncode == 0, remote.stderr
    rows = json.loads((tmp_path / "c.json").read_text())
    assert len(rows) == 3 and all(len(r["labels"]) == 2 and r["width"] == 128 for r in rows)
    assert all(r["labels"][0]["probability"] >= r["labels"][1]["probability"] for r in rows)

    def by_input(name: str) -> dict:
        lines = (tmp_path / name / "classifications.jsonl").read_text().splitlines()
        return {(row := json.loads(line))["input"]: row["labels"] for line in lines}

    served = {f"{i}.png": r["labels"] for i, r in enumerate(sorted(rows, key=lambda r: r["image"]))}
    assert [[x["class"] for x in v] for v in by_input("local").values()] == [
        [x["class"] for x in v] for v in by_input("remote").values()
    ]
    assert {k: [x["class"] for x in v] for k, v in by_input("local").items()} == {
        k: [x["class"] for x in v] for k, v in served.items()
    }
    assert len((tmp_path / "local" / "classifications.csv").read_text().splitlines()) == 4


def test_bad_training_data_is_reported_by_name(tmp_path):
    (tmp_path / "train" / "circle").mkdir(parents=True)
    out = _cli("train", "classification", "--train-images", tmp_path / "train", "--val-images", tmp_path / "train")
    assert out.returncode == 2 and "no images under" in out.stderr
