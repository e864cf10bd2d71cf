"""`cvtasks batch` as users run it: SIGKILL mid-run then the same command completes every input
exactly once; summary, exit codes and errors file; remote mode through `cvtasks serve`; wrong
arguments get a one-line error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from models.preprocessing import decode_image
from models.synth import generate_shapes
from services.cli import main
from tests.e2e.cli_server import CLI, ENV, cli_server


def _batch(*args, check_rc=None):
    proc = subprocess.run([*CLI, "batch", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def _lines(path):
    return path.read_text().splitlines() if path.is_file() else []


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-batch")
    generate_shapes(root / "data", splits={"test": 150}, image_size=96, seed=11)
    return root / "data" / "images" / "test"


def test_sigkill_mid_run_then_rerun_completes_every_input_exactly_once(segmenter_store, folder, tmp_path):
    out = tmp_path / "out"
    args = [
        "segmentation",
        folder,
        "--out",
        out,
        "--model-store",
        segmenter_store,
        "--batch-size",
        "2",
        "--overlay",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        [*CLI, "batch", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV
    )
    deadline = time.monotonic() + 300
    while len(_lines(out / "manifest.jsonl")) < 10:
        assert proc.poll() is None, f"the job ended early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_lines(out / "manifest.jsonl"))
    assert proc.returncode == -signal.SIGKILL and done_before < 150, "finished before the kill: use more images"

    rerun = _batch(*args, check_rc=0)
    summary = json.loads(rerun.stdout)
    assert summary["processed"] + summary["skipped"] == 150 and summary["skipped"] >= done_before - 1
    keys = [json.loads(line)["key"] for line in _lines(out / "manifest.jsonl")]
    assert sorted(keys) == sorted(p.name for p in folder.glob("*.png")) and len(keys) == len(set(keys))
    rows = [json.loads(line) for line in _lines(out / "segments.jsonl")]
    assert len(rows) == 150 and len({r["input"] for r in rows}) == 150
    assert len(list((out / "masks").iterdir())) == 150 and len(list((out / "overlays").iterdir())) == 150
    assert not list(out.rglob("*.tmp"))
    for row in rows[::25]:
        assert decode_image((out / row["mask"]).read_bytes()).shape == (96, 96, 3)
    assert len(_lines(out / "segments.csv")) == 151

    again = json.loads(_batch(*args, check_rc=0).stdout)
    assert (again["processed"], again["skipped"]) == (0, 150)


def test_bad_files_give_exit_code_1_errors_file_and_a_summary(detector_store, folder, tmp_path):
    small = tmp_path / "in"
    small.mkdir()
    for path in sorted(folder.glob("*.png"))[:6]:
        (small / path.name).write_bytes(path.read_bytes())
    (small / "zero.jpg").write_bytes(b"")
    (small / "text.png").write_text("hello")
    out = tmp_path / "out"
    proc = _batch(
        "detection",
        small,
        "--out",
        out,
        "--model-store",
        detector_store,
        "--annotate",
        "--score-threshold",
        "0.2",
        check_rc=1,
    )
    summary = json.loads(proc.stdout)
    assert (summary["total"], summary["processed"], summary["failed"]) == (8, 6, 2)
    assert "6 processed, 0 skipped (already done), 2 failed of 8" in proc.stderr and "errors.jsonl" in proc.stderr
    errors = {json.loads(line)["input"]: json.loads(line)["error"] for line in _lines(out / "errors.jsonl")}
    assert set(errors) == {"zero.jpg", "text.png"} and "unrecognised image format" in errors["text.png"]
    coco = json.loads((out / "detections_coco.json").read_text())
    assert len(coco["images"]) == 6 and coco["categories"][0] == {"id": 1, "name": "circle"}
    assert len(list((out / "annotated").iterdir())) == 6


def test_remote_mode_through_cvtasks_serve_gives_the_local_results(captioner_store, folder, tmp_path):
    small = tmp_path / "in"
    small.mkdir()
    for path in sorted(folder.glob("*.png"))[:24]:
        (small / path.name).write_bytes(path.read_bytes())
    local = json.loads(
        _batch(
            "captioning",
            small,
            "--out",
            tmp_path / "local",
            "--model-store",
            captioner_store,
            "--beam-size",
            "1",
            check_rc=0,
        ).stdout
    )
    with cli_server("captioning", captioner_store, tmp_path) as (_, address):
        remote = json.loads(
            _batch(
                "captioning", small, "--out", tmp_path / "remote", "--server", address, "--beam-size", "1", check_rc=0
            ).stdout
        )
    assert local["processed"] == remote["processed"] == 24
    assert (tmp_path / "local" / "captions.csv").read_text() == (tmp_path / "remote" / "captions.csv").read_text()


def test_generate_writes_images_and_grid(generator_store, tmp_path):
    summary = json.loads(
        _batch(
            "generate",
            "--count",
            "20",
            "--seed",
            "4",
            "--out",
            tmp_path / "g",
            "--model-store",
            generator_store,
            check_rc=0,
        ).stdout
    )
    assert summary["processed"] == 20 and len(list((tmp_path / "g" / "images" / "4").iterdir())) == 20
    grid = decode_image((tmp_path / "g" / "grid.png").read_bytes())
    assert grid.shape[0] > 32 * 4 and np.ptp(grid) > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["segmentation", "/no/such/folder", "--out", "{tmp}/o"], "no such input folder"),
        (["segmentation", "{folder}", "--out", "{tmp}/o", "--model", "nope"], "nope"),
        (["detection", "{folder}", "--out", "{tmp}/o"], "no detection model"),
        (["segmentation", "{folder}", "--out", "{tmp}/o", "--glob", "*.gif"], "no files matching *.gif"),
        (["segmentation", "{folder}", "--out", "{tmp}/o", "--max-side", "10"], "max_side must be in 64..4096"),
        (
            ["segmentation", "{folder}", "--out", "{tmp}/o", "--batch-size", "8", "--max-in-flight", "2"],
            "max_in_flight >= batch_size",
        ),
        (["generate", "--count", "0", "--out", "{tmp}/o"], "--count must be in 1..1000000"),
    ],
)
def test_wrong_arguments_get_a_one_line_error(segmenter_store, folder, tmp_path, args, message, capsys):
    filled = [a.format(tmp=tmp_path, folder=folder) for a in args]
    assert main(["batch", *filled, "--model-store", str(segmenter_store)]) == 2  # in-process: the CLI's handler
    err = capsys.readouterr().err
    assert err.startswith("cvtasks batch: error: ") and message in err and len(err.splitlines()) == 1, err
