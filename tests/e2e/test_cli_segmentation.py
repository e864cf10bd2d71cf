"""`cvtasks train/eval segmentation` and `cvtasks segment` as a user runs them."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np

from tests.e2e.cli_server import CLI, ENV, cli_server


def test_train_resume_eval_segmentation(shapes_dir, tmp_path):
    common = [
        "train",
        "segmentation",
        "--data",
        str(shapes_dir),
        "--name",
        "cli-seg",
        "--arch",
        "unet",
        "--encoder",
        "tu-mobilenetv3_small_100",
        "--model-args",
        '{"decoder_channels": [32, 16, 16, 8, 8]}',
        "--model-store",
        str(tmp_path / "store"),
        "--run-dir",
        str(tmp_path / "run"),
        "--warmup-steps",
        "5",
    ]
    first = subprocess.run([*CLI, *common, "--epochs", "1"], capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(
        [*CLI, *common, "--epochs", "2", "--resume"], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert second.returncode == 0, second.stderr
    assert "epoch 1/" not in second.stdout and "epoch 2/2" in second.stdout
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["mIoU"]) == 2 and "dice_loss" in history and "focal_loss" in history
    config = json.loads((tmp_path / "store" / "cli-seg" / "config.json").read_text())
    assert config["classes"] == ["background", "circle", "square", "triangle"]

    ev = subprocess.run(
        [
            *CLI,
            "eval",
            "segmentation",
            "--model",
            "cli-seg",
            "--model-store",
            str(tmp_path / "store"),
            "--data",
            str(shapes_dir),
            "--out",
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert ev.returncode == 0, ev.stderr
    assert "confusion matrix" in ev.stdout and "true \\ pred" in ev.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == 16 * 128 * 128
    assert cv2.imread(str(tmp_path / "eval" / "confusion.png")) is not None


def test_missing_mask_is_reported_by_name(shapes_dir, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("000001.png", "000002.png"):
        (images / name).write_bytes((shapes_dir / "images" / "train" / name).read_bytes())
    (masks / "000001.png").write_bytes((shapes_dir / "masks" / "train" / "000001.png").read_bytes())
    out = subprocess.run(
        [
            *CLI,
            "train",
            "segmentation",
            "--train-images",
            str(images),
            "--train-masks",
            str(masks),
            "--val-images",
            str(images),
            "--val-masks",
            str(masks),
            "--classes",
            str(shapes_dir / "classes.txt"),
            "--model-store",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert out.returncode == 2 and "000002.png" in out.stderr and "no mask" in out.stderr


def test_segment_command_writes_masks_and_overlays(segmenter_store, shapes_dir, tmp_path):
    with cli_server("segmentation", segmenter_store, tmp_path) as (_, address):
        images = sorted((shapes_dir / "images" / "test").glob("*.png"))[:2]
        out = subprocess.run(
            [*CLI, "segment", *map(str, images), "--server", address, "--out", str(tmp_path), "--contours"],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert out.returncode == 0, out.stderr
        rows = json.loads((tmp_path / "segments.json").read_text())
        for _image, row in zip(images, rows):
            mask = cv2.imread(row["mask"], cv2.IMREAD_UNCHANGED)
            assert mask.shape == (128, 128) and row["processing"] == "whole"
            assert cv2.imread(row["overlay"]).shape == (128, 128, 3)
            assert sum(v["pixels"] for v in row["areas"].values()) == 128 * 128
