"""`cvtasks train generation` as a user runs it."""

from __future__ import annotations

import json
import subprocess

import cv2

from tests.e2e.cli_server import CLI, ENV, cli_server


def test_train_and_resume_generation(shapes_dir, tmp_path):
    common = [
        "train",
        "generation",
        "--images",
        str(shapes_dir / "images" / "val"),
        "--name",
        "cli-gan",
        "--image-size",
        "32",
        "--channels",
        "1",
        "--nz",
        "16",
        "--ngf",
        "8",
        "--ndf",
        "8",
        "--batch-size",
        "8",
        "--label-smoothing",
        "0.1",
        "--model-store",
        str(tmp_path / "store"),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    first = subprocess.run([*CLI, *common, "--epochs", "1"], capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr
    assert "epoch 1/1: D loss" in first.stdout
    second = subprocess.run(
        [*CLI, *common, "--epochs", "2", "--resume"], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert second.returncode == 0, second.stderr
    assert "epoch 1/" not in second.stdout and "epoch 2/2" in second.stdout
    report = json.loads(second.stdout[second.stdout.index("{") :])
    samples = cv2.imread(report["samples"], cv2.IMREAD_UNCHANGED)
    assert samples.ndim == 2  # grayscale grid of the fixed-noise samples
    assert cv2.imread(report["plot"]) is not None
    config = json.loads((tmp_path / "store" / "cli-gan" / "config.json").read_text())
    assert config["task"] == "generation" and config["model_args"]["channels"] == 1


def test_an_empty_folder_is_reported(tmp_path):
    out = subprocess.run(
        [*CLI, "train", "generation", "--images", str(tmp_path)], capture_output=True, text=True, timeout=120, env=ENV
    )
    assert out.returncode == 2 and "no images" in out.stderr


def test_generate_command_writes_images_and_a_grid_and_repeats_a_seed(generator_store, tmp_path):
    with cli_server("generation", generator_store, tmp_path) as (_, address):
        runs = []
        for folder in ("a", "b"):
            out = subprocess.run(
                [*CLI, "generate", "--count", "6", "--seed", "5", "--server", address, "--out", str(tmp_path / folder)],
                capture_output=True,
                text=True,
                timeout=120,
                env=ENV,
            )
            assert out.returncode == 0, out.stderr
            runs.append(json.loads(out.stdout))
        assert len(runs[0]["images"]) == 6
        for first, second in zip(runs[0]["images"], runs[1]["images"]):
            assert open(first, "rb").read() == open(second, "rb").read()
        assert cv2.imread(runs[0]["grid"]).shape == (2 * 34 + 2, 3 * 34 + 2, 3)  # 6 images: 3 columns, 2 rows
        path = subprocess.run(
            [
                *CLI,
                "generate",
                "--interpolate",
                "1",
                "2",
                "--steps",
                "4",
                "--server",
                address,
                "--out",
                str(tmp_path / "p"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert path.returncode == 0 and cv2.imread(json.loads(path.stdout)["grid"]).shape == (36, 4 * 34 + 2, 3)
        bad = subprocess.run(
            [*CLI, "generate", "--count", "100", "--server", address, "--out", str(tmp_path / "x")],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "count must be in 1..64" in bad.stderr


def test_eval_generation_reports_model_and_untrained_baseline(generator_store, shapes_dir, tmp_path):
    out = subprocess.run(
        [
            *CLI,
            "eval",
            "generation",
            "--model",
            "tiny-generator",
            "--model-store",
            str(generator_store),
            "--data",
            str(shapes_dir),
            "--samples",
            "40",
            "--classifier-epochs",
            "2",
            "--out",
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert out.returncode == 0, out.stderr
    assert "untrained baseline" in out.stdout and "Fréchet distance / baseline" in out.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["feature_classifier"]["classes"] == ["circle", "square", "triangle"]
    for key in ("model", "untrained baseline"):
        assert metrics[key]["frechet_distance"] >= 0 and 0 <= metrics[key]["recognised_share"] <= 1
    assert cv2.imread(str(tmp_path / "eval" / "model_samples.png")) is not None
    assert cv2.imread(str(tmp_path / "eval" / "untrained_baseline_samples.png")) is not None
