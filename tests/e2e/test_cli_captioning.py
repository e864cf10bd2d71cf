"""`cvtasks train/eval captioning` and `cvtasks caption` as a user runs them."""

from __future__ import annotations

import json
import subprocess

import cv2

from tests.e2e.cli_server import CLI, ENV, cli_server


def test_train_resume_eval_captioning(shapes_dir, tmp_path):
    common = [
        "train",
        "captioning",
        "--data",
        str(shapes_dir),
        "--name",
        "cli-cap",
        "--embed-size",
        "32",
        "--hidden-size",
        "64",
        "--image-size",
        "96",
        "--batch-size",
        "16",
        "--warmup-steps",
        "2",
        "--model-store",
        str(tmp_path / "store"),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    first = subprocess.run([*CLI, *common, "--epochs", "1"], capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr
    assert "epoch 1/1" in first.stdout and "val BLEU-4" in first.stdout
    second = subprocess.run(
        [*CLI, *common, "--epochs", "2", "--resume"], capture_output=True, text=True, timeout=300, env=ENV
    )
    assert second.returncode == 0, second.stderr
    assert "epoch 1/" not in second.stdout and "epoch 2/2" in second.stdout
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["BLEU-4"]) == 2 and len(history["loss"]) == 2
    assert cv2.imread(str(tmp_path / "run" / "curves.png")) is not None
    config = json.loads((tmp_path / "store" / "cli-cap" / "config.json").read_text())
    assert config["task"] == "captioning" and "circle" in config["extra"]["vocab"]["words"]

    ev = subprocess.run(
        [
            *CLI,
            "eval",
            "captioning",
            "--model",
            "cli-cap",
            "--model-store",
            str(tmp_path / "store"),
            "--data",
            str(shapes_dir),
            "--beam-sizes",
            "1",
            "2",
            "--out",
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert ev.returncode == 0, ev.stderr
    assert "beam  1:" in ev.stdout and "beam  2:" in ev.stdout and "CIDEr-D" in ev.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 16 and set(metrics["by_beam_size"]) == {"1", "2"}
    assert {"BLEU-1", "BLEU-4", "CIDEr-D"} <= set(metrics["by_beam_size"]["2"])
    captions = json.loads((tmp_path / "eval" / "captions.json").read_text())
    assert len(captions) == 16 and all(row["references"] for row in captions)
    assert cv2.imread(str(tmp_path / "eval" / "examples.png")) is not None


def test_eval_refuses_a_model_of_another_task(detector_store, shapes_dir):
    out = subprocess.run(
        [
            *CLI,
            "eval",
            "captioning",
            "--model",
            "tiny-detector",
            "--model-store",
            str(detector_store),
            "--data",
            str(shapes_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert out.returncode == 2 and "not a captioner" in out.stderr


def test_caption_command_prints_captions_and_reports_bad_files_and_options(captioner_store, shapes_dir, tmp_path):
    with cli_server("captioning", captioner_store, tmp_path) as (_, address):
        images = [str(p) for p in sorted((shapes_dir / "images" / "test").glob("*.png"))[:2]]
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
        out = subprocess.run(
            [
                *CLI,
                "caption",
                images[0],
                str(bad),
                images[1],
                "--server",
                address,
                "--num-captions",
                "2",
                "--output",
                str(tmp_path / "captions.json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert out.returncode == 1  # one file failed; the others were captioned
        rows = json.loads((tmp_path / "captions.json").read_text())
        assert [r["image"] for r in rows] == [images[0], str(bad), images[1]]
        assert len(rows[0]["captions"]) == 2 and rows[1]["error"]["code"] == 3
        assert "broken.jpg: error:" in out.stderr

        refused = subprocess.run(
            [*CLI, "caption", images[0], "--server", address, "--beam-size", "0"],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert refused.returncode == 1 and "beam_size must be in 1..16" in refused.stderr
