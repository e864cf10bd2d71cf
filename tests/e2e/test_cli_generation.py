"""`cvtasks train generation` as a user runs it."""

from __future__ import annotations

import json
import subprocess

import cv2

from tests.e2e.test_cli import CLI, ENV


def test_train_and_resume_generation(shapes_dir, tmp_path):
    common = ["train", "generation", "--images", str(shapes_dir / "images" / "val"), "--name", "cli-gan",
              "--image-size", "32", "--channels", "1", "--nz", "16", "--ngf", "8", "--ndf", "8", "--batch-size", "8",
              "--label-smoothing", "0.1", "--model-store", str(tmp_path / "store"), "--run-dir", str(tmp_path / "run")]
    first = subprocess.run([*CLI, *common, "--epochs", "1"], capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr
    assert "epoch 1/1: D loss" in first.stdout
    second = subprocess.run([*CLI, *common, "--epochs", "2", "--resume"], capture_output=True, text=True,
                            timeout=300, env=ENV)
    assert second.returncode == 0, second.stderr
    assert "epoch 1/" not in second.stdout and "epoch 2/2" in second.stdout
    report = json.loads(second.stdout[second.stdout.index("{"):])
    samples = cv2.imread(report["samples"], cv2.IMREAD_UNCHANGED)
    assert samples.ndim == 2  # grayscale grid of the fixed-noise samples
    assert cv2.imread(report["plot"]) is not None
    config = json.loads((tmp_path / "store" / "cli-gan" / "config.json").read_text())
    assert config["task"] == "generation" and config["model_args"]["channels"] == 1


def test_an_empty_folder_is_reported(tmp_path):
    out = subprocess.run([*CLI, "train", "generation", "--images", str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert out.returncode == 2 and "no images" in out.stderr
