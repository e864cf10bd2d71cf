"""Clients that give up on a stream, in every way and at every point, against `cvtasks serve` in a
subprocess (so a crash shows as the process dying; PYTHONFAULTHANDLER=1 leaves the stack in its log).

Issue 17: a stream the client cancelled, or whose deadline expired, could kill the server with a
SIGSEGV (the per-RPC log read the peer from a call grpc had already released). Here each typed
stream (DetectStream, SegmentStream, CaptionStream) and KServe ModelStreamInfer is cancelled before
its first response, after it, midway, left to expire midway, and cut by closing the channel, 20 times
each, four clients at a time; a few client processes are also killed mid-stream. Then the process
must be alive, answer a unary call and health, and have counted no stream as INTERNAL or OK that
the client gave up on early.
"""

from __future__ import annotations

import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kgrpc

from models.preprocessing import encode_image
from services.client import CvtasksClient, caption_request, detect_request, segment_request
from services.pb import captioning_pb2_grpc, detection_pb2_grpc, segmentation_pb2_grpc
from tests.e2e.cli_server import ENV, cli_server, server_log

TASKS = ("detection", "segmentation", "captioning")
REPETITIONS = 20  # per stream and way
ITEMS = 8  # requests per stream
WAYS = ("cancel_before_first", "cancel_after_first", "cancel_midway", "deadline_midway", "close_channel")


@dataclass(frozen=True)
class Stream:
    """How to open one stream RPC on a channel, with ``requests`` (an iterator of request messages)."""

    method: str
    open: Callable[[grpc.Channel, Any, float], Any]
    request: Callable[[bytes], Any]


def _kserve_request(png: bytes) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name="tiny-segmenter")
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(png)) + png)
    return request


STREAMS = {
    "DetectStream": Stream(
        "/cvtasks.v1.DetectionService/DetectStream",
        lambda ch, reqs, t: detection_pb2_grpc.DetectionServiceStub(ch).DetectStream(reqs, timeout=t),
        lambda png: detect_request(png, score_threshold=0.0),
    ),
    "SegmentStream": Stream(
        "/cvtasks.v1.SegmentationService/SegmentStream",
        lambda ch, reqs, t: segmentation_pb2_grpc.SegmentationServiceStub(ch).SegmentStream(reqs, timeout=t),
        lambda png: segment_request(png, contours=True),
    ),
    "CaptionStream": Stream(
        "/cvtasks.v1.CaptioningService/CaptionStream",
        lambda ch, reqs, t: captioning_pb2_grpc.CaptioningServiceStub(ch).CaptionStream(reqs, timeout=t),
        lambda png: caption_request(png, beam_size=3),
    ),
    "ModelStreamInfer": Stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        lambda ch, reqs, t: kgrpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(reqs, timeout=t),
        _kserve_request,
    ),
}


@pytest.fixture(scope="module")
def store(random_detector_store, segmenter_store, captioner_store, tmp_path_factory):
    store = tmp_path_factory.mktemp("faults-store")
    for source, name in (
        (random_detector_store, "random-detector"),
        (segmenter_store, "tiny-segmenter"),
        (captioner_store, "tiny-captioner"),
    ):
        shutil.copytree(source / name, store / name)
    return store


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [encode_image(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "png") for _ in range(4)]


def _requests(stream: Stream, images: list[bytes], pause_s: float):
    for i in range(ITEMS):
        if pause_s:
            time.sleep(pause_s)
        yield stream.request(images[i % len(images)])


def _give_up(address: str, stream: Stream, way: str, images: list[bytes], seed: int) -> str:
    """One stream that ``way`` gives up on; returns what the client saw (a status name, or OK)."""
    rng = random.Random(seed)
    channel = grpc.insecure_channel(address)
    deadline = rng.uniform(0.2, 0.6) if way == "deadline_midway" else 30.0
    # Paced requests (odd seeds) keep the stream open until the client gives up, so the server must see it
    # given up on; unpaced ones let the server race the client. Expiring streams outlive their deadline.
    pause = 0.1 if way == "deadline_midway" else 0.02 if seed % 2 else 0.0
    call = stream.open(channel, _requests(stream, images, pause), deadline)
    try:
        if way == "cancel_before_first":
            time.sleep(rng.uniform(0, 0.02))
            call.cancel()
        else:
            wanted = {
                "cancel_after_first": 1,
                "cancel_midway": rng.randint(2, ITEMS - 2),
                "close_channel": rng.randint(1, ITEMS - 1),
            }.get(way, ITEMS + 1)
            for got, _ in enumerate(call, start=1):
                if got >= wanted:
                    break
            if way == "close_channel":
                channel.close()
            else:
                call.cancel()
        list(call)  # what the client sees once it gave up
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name
    finally:
        channel.close()


KILLED_CLIENT = textwrap.dedent("""
    import sys, grpc
    from services.client import detect_request
    from services.pb import detection_pb2_grpc
    png = open(sys.argv[2], "rb").read()
    channel = grpc.insecure_channel(sys.argv[1])
    call = detection_pb2_grpc.DetectionServiceStub(channel).DetectStream(iter([detect_request(png)] * 200))
    next(call)
    print("streaming", flush=True)
    for _ in call:
        pass
""")


def _kill_a_client_mid_stream(address: str, png_path: str) -> None:
    client = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, address, png_path], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert client.stdout.readline().strip() == "streaming"
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(30)


def _requests_total(url: str) -> Counter:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    counted: Counter = Counter()  # (method, status) -> RPCs, whatever model they resolved (or none)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cvtasks_requests_total":
                counted[(sample.labels["method"], sample.labels["status"])] += sample.value
    return counted


def _assert_alive(proc: subprocess.Popen, log_dir) -> None:
    if proc.poll() is not None:
        log = server_log(log_dir, TASKS)
        crash = log[log.find("Fatal Python error") :][:2500] if "Fatal Python error" in log else log[-2500:]
        pytest.fail(f"the server died (exit {proc.returncode}):\n{crash}")


def test_streams_given_up_on_in_every_way_never_crash_the_server(store, images, tmp_path):
    png_path = tmp_path / "image.png"
    png_path.write_bytes(images[0])
    with cli_server(list(TASKS), store, tmp_path, "--metrics-port", "0") as (proc, address):
        jobs = [(name, way, seed) for name in STREAMS for way in WAYS for seed in range(REPETITIONS)]
        random.Random(17).shuffle(jobs)
        with ThreadPoolExecutor(4) as pool:
            seen = list(
                pool.map(lambda job: (job[0], job[1], _give_up(address, STREAMS[job[0]], job[1], images, job[2])), jobs)
            )
        _assert_alive(proc, tmp_path)
        for _ in range(3):
            _kill_a_client_mid_stream(address, str(png_path))
        time.sleep(0.5)  # the last streams' cleanup runs after their clients are gone
        _assert_alive(proc, tmp_path)
        with CvtasksClient(address, timeout=60) as client:
            assert client.health() == "SERVING"
            assert client.detect(images[0]).image_width == 64
            assert client.segment(images[0]).label_map_png
        counted = _requests_total(address.metrics_url)
    log = server_log(tmp_path, TASKS)
    assert "Fatal Python error" not in log and "Segmentation fault" not in log

    client_saw = Counter((name, way, status) for name, way, status in seen)
    for name in STREAMS:  # the client saw what it did
        assert client_saw[(name, "deadline_midway", "DEADLINE_EXCEEDED")] == REPETITIONS, client_saw
        assert client_saw[(name, "cancel_midway", "CANCELLED")] == REPETITIONS, client_saw
    for name, stream in STREAMS.items():  # the server counted each as given up, never as its own failure
        statuses = {status: n for (method, status), n in counted.items() if method == stream.method}
        assert set(statuses) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED"}, (name, statuses)
        # At least the paced streams cancelled after the first response, midway, or by closing the channel.
        assert statuses.get("CANCELLED", 0) >= 3 * REPETITIONS // 2, (name, statuses)
        assert statuses.get("DEADLINE_EXCEEDED", 0) >= REPETITIONS // 2, (name, statuses)
        assert sum(statuses.values()) <= len(WAYS) * REPETITIONS + (3 if name == "DetectStream" else 0)
    assert not any(status in ("INTERNAL", "UNKNOWN") for _, status in counted), counted
