"""Remote mode of batch jobs against real servers (port 0): the same outputs as the local engine,
bad files recorded from the stream's per-item errors, a server restart mid-run survived with
every input answered exactly once, and generation drawing the same images as locally."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time

import cv2
import numpy as np
import pytest

from models import checkpoints
from models.batch.engine import file_work, index_work, run_local
from models.batch.job import build_job
from models.batch.store import Manifest, list_inputs
from models.preprocessing import decode_image
from models.synth import generate_shapes
from services.batch_remote import remote_config, run_remote, run_remote_generate
from services.client import CvtasksClient
from services.launch import running_server
from tests.devices import assert_area_fractions_agree, assert_labels_agree


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote-in")
    generate_shapes(root / "data", splits={"test": 40}, image_size=96, seed=7)
    images = root / "data" / "images" / "test"
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return images


def _mask(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _remote(address, task_name, folder, out, **kwargs):
    with CvtasksClient(address, timeout=60) as client:
        task = build_job(task_name, remote_config(client, task_name, ""), out)
        return run_remote(task, client, list_inputs(folder), Manifest(out, task.job()), progress=False, **kwargs)


def test_remote_outputs_equal_the_local_engines_and_bad_files_are_recorded(segmenter_store, folder, tmp_path):
    model, config = checkpoints.load_model(segmenter_store / "tiny-segmenter")
    task = build_job("segmentation", config, tmp_path / "local")
    run_local(
        task, model, file_work(task, list_inputs(folder)), Manifest(tmp_path / "local", task.job()), progress=False
    )
    with running_server(task="segmentation", model_store=segmenter_store) as address:
        summary = _remote(address, "segmentation", folder, tmp_path / "remote", in_flight=8)
    assert (summary.processed, summary.failed) == (40, 1)
    local, remote = _jsonl(tmp_path / "local" / "segments.jsonl"), _jsonl(tmp_path / "remote" / "segments.jsonl")
    assert_area_fractions_agree([r["classes"] for r in remote], [r["classes"] for r in local])
    for row in remote[:5]:
        assert_labels_agree(_mask(tmp_path / "remote" / row["mask"]), _mask(tmp_path / "local" / row["mask"]))
    (error,) = _jsonl(tmp_path / "remote" / "errors.jsonl")
    assert error["input"] == "broken.png" and error["error"].startswith("INVALID_ARGUMENT: ")


def test_a_server_restart_mid_run_is_retried_and_every_input_is_answered_once(
    segmenter_store, folder, tmp_path, caplog
):
    out = tmp_path / "restart"
    caplog.set_level(logging.WARNING, logger="cvtasks.batch")
    with contextlib.ExitStack() as first:
        address = first.enter_context(running_server(task="segmentation", model_store=segmenter_store, grace_s=0))
        port = int(address.rsplit(":", 1)[1])
        result: dict = {}
        job = threading.Thread(
            target=lambda: result.update(summary=_remote(address, "segmentation", folder, out, in_flight=2, retry_s=60))
        )
        job.start()
        deadline = time.monotonic() + 60
        while not (out / "manifest.jsonl").is_file() or len((out / "manifest.jsonl").read_text().splitlines()) < 4:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.02)
    answered_before = len((out / "manifest.jsonl").read_text().splitlines())
    assert answered_before < 41, "the job finished before the server stopped: make the folder larger"
    with running_server(task="segmentation", model_store=segmenter_store, port=port):
        job.join(120)
    assert not job.is_alive() and (result["summary"].processed, result["summary"].failed) == (40, 1)
    assert any("retrying" in r.message for r in caplog.records)
    keys = [json.loads(line)["key"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 41
    assert len(_jsonl(out / "segments.jsonl")) == 40 and len(list((out / "masks").iterdir())) == 40


def test_an_unknown_model_or_a_model_of_another_task_is_refused(segmenter_store):
    with running_server(task="segmentation", model_store=segmenter_store) as address:
        with CvtasksClient(address, timeout=30) as client:
            with pytest.raises(ValueError, match="is a segmentation model, not detection"):
                remote_config(client, "detection", "")
            with pytest.raises(Exception, match="Unknown model `nope`"):
                remote_config(client, "segmentation", "nope")


@pytest.mark.parametrize(
    "store, name", [("generator_store", "tiny-generator"), ("mixture_generator_store", "tiny-mixture-generator")]
)
def test_remote_generation_draws_the_same_images_as_local(store, name, request, tmp_path):
    generator_store = request.getfixturevalue(store)  # a standard-normal prior, and a mixture's
    model, config = checkpoints.load_model(generator_store / name)
    local = build_job("generation", config, tmp_path / "local", seed=3)
    run_local(local, model, index_work(local, 70), Manifest(tmp_path / "local", local.job()), progress=False)
    with running_server(task="generation", model_store=generator_store) as address:
        with CvtasksClient(address, timeout=60) as client:
            task = build_job("generation", remote_config(client, "generation", ""), tmp_path / "remote", seed=3)
            summary = run_remote_generate(task, client, 70, Manifest(tmp_path / "remote", task.job()), progress=False)
    assert summary.processed == 70  # two Generate calls: 64 + 6
    for index in (0, 1, 63, 64, 69):
        name = f"images/3/{index:06d}.png"
        a = decode_image((tmp_path / "local" / name).read_bytes()).astype(int)
        b = decode_image((tmp_path / "remote" / name).read_bytes()).astype(int)
        assert np.abs(a - b).max() <= 1  # same latents; batch composition may move a pixel by one level
    shutil.rmtree(tmp_path)
