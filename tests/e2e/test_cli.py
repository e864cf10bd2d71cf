"""The `cvtasks` command as a user runs it: serve in a subprocess, detect, SIGTERM; train, resume, eval."""

from __future__ import annotations

import json
import signal
import subprocess

import cv2
import pytest

from tests.e2e.cli_server import CLI, ENV, cli_server, server_log


@pytest.fixture()
def served(detector_store, tmp_path):
    with cli_server("detection", detector_store, tmp_path, "--grace-s", "5") as (proc, address):
        yield proc, address


def test_serve_detect_and_sigterm(served, shapes_dir, tmp_path):
    proc, address = served
    images = sorted((shapes_dir / "images" / "test").glob("*.png"))[:3]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    out = subprocess.run(
        [
            *CLI,
            "detect",
            *map(str, images),
            str(bad),
            "--server",
            address,
            "--score-threshold",
            "0.1",
            "--annotate-dir",
            str(tmp_path / "annotated"),
            "--output",
            str(tmp_path / "results.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert out.returncode == 1, out.stderr  # one file failed: the exit code says so
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["image"] for r in rows] == [*map(str, images), str(bad)]
    assert "error" in rows[-1] and "broken.jpg" in out.stderr
    for row in rows[:-1]:
        assert row["width"] == 128 and row["detections"], row
        drawn = cv2.imread(row["annotated"])
        assert drawn is not None and drawn.shape == (128, 128, 3)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert '"msg": "stopped"' in server_log(tmp_path, "detection")


def test_train_resume_and_eval(shapes_dir, tmp_path):
    common = [
        "train",
        "detection",
        "--data",
        str(shapes_dir),
        "--name",
        "cli-det",
        "--model-store",
        str(tmp_path / "store"),
        "--run-dir",
        str(tmp_path / "run"),
        "--warmup-steps",
        "5",
    ]
    first = subprocess.run([*CLI, *common, "--epochs", "1"], capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr
    resumed = subprocess.run(
        [*CLI, *common, "--epochs", "2", "--resume"], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 1/" not in resumed.stdout and "epoch 2/2" in resumed.stdout
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["AP50"]) == 2 and len(history["loss"]) == 2
    assert cv2.imread(str(tmp_path / "run" / "curves.png")) is not None
    config = json.loads((tmp_path / "store" / "cli-det" / "config.json").read_text())
    assert config["version"] == "1" and set(config["metrics"]) == {"AP", "AP50", "AP75"}

    ev = subprocess.run(
        [
            *CLI,
            "eval",
            "detection",
            "--model",
            "cli-det",
            "--model-store",
            str(tmp_path / "store"),
            "--data",
            str(shapes_dir),
            "--out",
            str(tmp_path / "eval.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert ev.returncode == 0, ev.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["images"] == 16 and 0.0 <= report["AP50"] <= 1.0


def test_user_errors_are_one_line_without_traceback(tmp_path):
    out = subprocess.run(
        [*CLI, "train", "detection", "--data", str(tmp_path), "--arch", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert out.returncode == 2
    assert "Unknown detection architecture `nope`" in out.stderr and "Traceback" not in out.stderr


def test_fine_tune_a_stored_model_on_a_new_class_set(shapes_dir, detector_store, tmp_path):
    """--pretrained DIR: keep the backbone, put a new box predictor on for the new classes."""
    coco = json.loads((shapes_dir / "annotations" / "val.json").read_text())
    coco["categories"] = [{"id": 1, "name": "round"}, {"id": 2, "name": "angular"}]
    for ann in coco["annotations"]:
        ann["category_id"] = 1 if ann["category_id"] == 1 else 2
    (tmp_path / "two.json").write_text(json.dumps(coco))
    images = str(shapes_dir / "images" / "val")
    out = subprocess.run(
        [
            *CLI,
            "train",
            "detection",
            "--train-images",
            images,
            "--train-annotations",
            str(tmp_path / "two.json"),
            "--val-images",
            images,
            "--val-annotations",
            str(tmp_path / "two.json"),
            "--name",
            "two-class",
            "--pretrained",
            str(detector_store / "tiny-detector"),
            "--model-store",
            str(tmp_path / "store"),
            "--run-dir",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--warmup-steps",
            "2",
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "store" / "two-class" / "config.json").read_text())
    assert config["classes"] == ["round", "angular"] and config["architecture"] == "fasterrcnn_tiny"


@pytest.mark.parametrize(
    "argv", [["--help"], ["detect", "--help"], ["generate", "--help"], ["models", "list", "--help"]]
)
def test_help_and_client_commands_do_not_import_torch(argv):
    """Only the named command's module is imported: `cvtasks --help` and the client commands start
    in well under a second, not after the seconds torch takes to load."""
    probe = (
        "import sys; from services import cli\n"
        "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    out = subprocess.run([CLI[0], "-c", probe, *argv], capture_output=True, text=True, timeout=120, env=ENV)
    assert out.stdout.strip().endswith("TORCH False"), out.stdout + out.stderr
    assert "usage: cvtasks" in out.stdout
