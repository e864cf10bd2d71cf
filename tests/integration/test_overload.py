"""Overload on a real server: a flood beyond the queue bound is refused with RESOURCE_EXHAUSTED
while the accepted requests complete and health stays SERVING; deadlines: the server's default
applies to calls without one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from models.preprocessing import encode_image
from services.client import segment_request
from services.host import ServingConfig
from services.launch import running_server
from services.pb import segmentation_pb2_grpc
from services.streaming import deadline_of


def test_a_flood_beyond_the_queue_gets_resource_exhausted_and_the_rest_complete(segmenter_store, shapes_dir):
    image = (shapes_dir / "images" / "test" / "000001.png").read_bytes()
    with running_server(
        task="segmentation", model_store=segmenter_store, max_batch_size=1, max_queue_size=2, max_delay_ms=0
    ) as address:

        async def flood():
            async with grpc.aio.insecure_channel(address) as channel:
                stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                finished = []

                async def one(i):
                    try:
                        await stub.Segment(segment_request(image, request_id=str(i)), timeout=120)
                        finished.append(("OK", time.monotonic()))
                    except grpc.aio.AioRpcError as exc:
                        finished.append((exc.code().name, time.monotonic()))

                calls = asyncio.gather(*(one(i) for i in range(48)))
                await asyncio.sleep(0.05)
                during = (await health.Check(health_pb2.HealthCheckRequest(), timeout=10)).status
                await calls
                after = await stub.Segment(segment_request(image), timeout=60)
                return finished, during, after

        finished, during, after = asyncio.run(flood())
    codes = [code for code, _ in finished]
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"} and codes.count("OK") >= 3
    last_refusal = max(t for code, t in finished if code == "RESOURCE_EXHAUSTED")
    last_success = max(t for code, t in finished if code == "OK")
    assert last_refusal < last_success  # refusals come back at once, not after waiting their turn
    assert during == health_pb2.HealthCheckResponse.SERVING and after.label_map_png


def test_a_call_without_a_deadline_gets_the_servers_default(segmenter_store, shapes_dir):
    image = (shapes_dir / "images" / "test" / "000001.png").read_bytes()
    with running_server(
        task="segmentation", model_store=segmenter_store, default_deadline_s=1e-4, max_deadline_s=1.0
    ) as address:
        with grpc.insecure_channel(address) as channel:
            stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Segment(segment_request(image))
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "deadline" in err.value.details()


def test_deadline_policy():
    limits = ServingConfig(default_deadline_s=5.0, max_deadline_s=20.0)
    context = lambda remaining: SimpleNamespace(time_remaining=lambda: remaining)  # noqa: E731
    now = time.monotonic()
    assert deadline_of(context(None)) is None  # streams: the client's, none here
    assert 4.9 < deadline_of(context(None), limits) - now < 5.5
    assert 19.9 < deadline_of(context(1000.0), limits) - now < 20.5
    assert 1.9 < deadline_of(context(2.0), limits) - now < 2.5
    with pytest.raises(ValueError, match="default_deadline_s <= max_deadline_s"):
        ServingConfig(default_deadline_s=30, max_deadline_s=10)


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


BYTES_PER_PIXEL = 30  # the README's figure for the memory a decoded pixel costs while its request is served


def test_a_flood_of_large_images_is_refused_before_decoding_and_memory_stays_under_the_ceiling(
    segmenter_store, tmp_path
):
    """20 requests of a 25 Mpx image at once, a pixel bound of one such image: one is served at a
    time and the others are refused at once, without being decoded (20 decoded images would need
    about 8 GB; the bound holds the growth of the server's peak memory near one image's worth)."""
    from tests.e2e.cli_server import cli_server

    bound = 26_000_000
    image = encode_image(np.full((5000, 5000, 3), 90, np.uint8), "png")  # compresses to ~80 KB
    extra = ("--max-pixels", str(bound), "--max-inflight-pixels", str(bound), "--max-delay-ms", "0")
    with cli_server("segmentation", segmenter_store, tmp_path, *extra) as (proc, address):
        before = _memory_kib(proc.pid, "VmRSS")
        with grpc.insecure_channel(address) as channel:
            stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
            futures = [stub.Segment.future(segment_request(image), timeout=300) for _ in range(20)]
            outcomes = []
            for future in futures:
                try:
                    future.result()
                    outcomes.append("OK")
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)
                    assert "at capacity" in exc.details()
            peak = _memory_kib(proc.pid, "VmHWM")
            assert stub.Segment(segment_request(image), timeout=300).label_map_png  # still serving
    assert outcomes.count("OK") >= 1 and outcomes.count("RESOURCE_EXHAUSTED") >= 15, outcomes
    grown_mb = (peak - before) / 1024
    print(f"peak RSS grew by {grown_mb:.0f} MB serving {outcomes.count('OK')} of 20 25-Mpx requests")
    assert grown_mb * 2**20 < bound * BYTES_PER_PIXEL + 300 * 2**20
