"""``gpu_decode``: a real server on port 0 with batched JPEG decoding on (on the CPU here; the
same code runs nvJPEG on CUDA) answers Detect as one with it off, for JPEGs, a PNG and a corrupt
JPEG, sent concurrently."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

import services.imaging
from models.preprocessing import encode_image
from services.client import CvtasksClient
from services.launch import running_server
from tests.unit.test_jpeg_batch import JPEGS, corrupt_huffman_table, scene


def _answers(address: str, images: list[bytes]) -> list[tuple[str, ...] | tuple[np.ndarray, list[str], list[float]]]:
    """Each image's detections (boxes, classes, scores) or (status, details), asked concurrently."""

    def one(data: bytes):
        with CvtasksClient(address, timeout=60) as client:
            try:
                response = client.detect(data, score_threshold=0.0)
            except grpc.RpcError as exc:
                return exc.code().name, exc.details()
        # Random weights give many near-tied scores, whose order may differ with the batch an
        # image ran in: compare the detections in a fixed order.
        rows = sorted(
            (d.class_name, d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score) for d in response.detections
        )
        boxes = np.array([row[1:5] for row in rows]).reshape(-1, 4)
        return boxes, [row[0] for row in rows], [row[5] for row in rows]

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, images))


def test_detect_with_gpu_decode_on_answers_as_with_it_off(random_detector_store, monkeypatch):
    batched: list[int] = []
    decode_jpegs = services.imaging.decode_jpegs

    def counted(datas, **kwargs):
        batched.append(len(datas))
        return decode_jpegs(datas, **kwargs)

    monkeypatch.setattr(services.imaging, "decode_jpegs", counted)
    images = [*JPEGS, encode_image(scene(96, 128), "png"), corrupt_huffman_table(JPEGS[0])]
    answers = {}
    for mode in ("off", "on"):
        store = random_detector_store
        # max_batch_size 1: a detector pads the images of a batch to one size, so its answers
        # would depend on which requests shared a model batch; decoding still batches.
        serving = {"device": "cpu", "gpu_decode": mode, "max_batch_size": 1}
        with running_server(task="detection", model_store=store, **serving) as address:
            answers[mode] = _answers(address, images)
        if mode == "off":
            assert not batched  # off: every image in the thread pool
    assert sum(batched) >= len(JPEGS)  # on: every good JPEG went through the batched decoder
    assert answers["on"][-1][0] == "INVALID_ARGUMENT" and answers["on"][-1] == answers["off"][-1]
    for on, off in zip(answers["on"][:-1], answers["off"][:-1], strict=True):
        assert on[1] == off[1] and len(on[1]) > 0
        np.testing.assert_allclose(on[0], off[0], atol=1e-3)
        np.testing.assert_allclose(on[2], off[2], atol=1e-4)


@pytest.mark.parametrize("mode", ["maybe"])
def test_an_unknown_gpu_decode_mode_is_refused(random_detector_store, mode):
    with pytest.raises(ValueError, match="gpu_decode must be one of auto, on, off"):
        with running_server(task="detection", model_store=random_detector_store, gpu_decode=mode):
            pass
