"""services/metrics.py: the series, scrape-time gauges, the per-RPC record, the HTTP endpoint, and
the `--metrics-port` flag. The end-to-end check with a real server is tests/integration/test_metrics.py."""

from __future__ import annotations

import argparse
import contextvars
import time
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from services.host import BatchResult
from services.metrics import (
    STAGES,
    ServingMetrics,
    begin_rpc,
    current_rpc,
    gpu_memory,
    note_model,
    observe_stages,
)
from services.metrics_http import start_metrics_endpoint
from services.pipeline import stage_seconds
from services.typed import timings_proto


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_series_is_exposed_with_its_labels():
    m = ServingMetrics()
    m.observe_rpc(model="det", method="/cvtasks.v1.DetectionService/Detect", status="OK")
    m.observe_rpc(model="det", method="/cvtasks.v1.DetectionService/Detect", status="OK")
    m.observe_rpc(model="det", method="/cvtasks.v1.DetectionService/Detect", status="INVALID_ARGUMENT")
    m.observe_stages("det", {"queue": 0.003, "inference": 0.2})
    m.observe_batch("det", 3)
    m.watch_queues(lambda: {"det": 2})
    got = samples(m.text())
    method = ("method", "/cvtasks.v1.DetectionService/Detect")
    assert got[("cvtasks_requests_total", (method, ("model", "det"), ("status", "OK")))] == 2
    assert got[("cvtasks_requests_total", (method, ("model", "det"), ("status", "INVALID_ARGUMENT")))] == 1
    queue, inference = (("model", "det"), ("stage", "queue")), (("model", "det"), ("stage", "inference"))
    assert got[("cvtasks_request_latency_seconds_count", queue)] == 1
    assert got[("cvtasks_request_latency_seconds_sum", inference)] == pytest.approx(0.2)
    # 0.003 s lands in the 5 ms bucket, not the 2.5 ms one.
    assert got[("cvtasks_request_latency_seconds_bucket", (("le", "0.0025"), *queue))] == 0
    assert got[("cvtasks_request_latency_seconds_bucket", (("le", "0.005"), *queue))] == 1
    assert got[("cvtasks_batch_size_sum", (("model", "det"),))] == 3
    assert got[("cvtasks_queue_depth", (("model", "det"),))] == 2


def test_two_servers_in_one_process_keep_separate_counts():
    first, second = ServingMetrics(), ServingMetrics()  # the same names on the global registry would raise
    first.observe_batch("m", 4)
    assert ("cvtasks_batch_size_count", (("model", "m"),)) not in samples(second.text())
    assert samples(first.text())[("cvtasks_batch_size_count", (("model", "m"),))] == 1


def test_queue_depth_is_read_at_scrape_time_and_a_broken_source_does_not_fail_the_scrape():
    m = ServingMetrics()
    depth = {"a": 0}
    m.watch_queues(lambda: dict(depth))
    assert samples(m.text())[("cvtasks_queue_depth", (("model", "a"),))] == 0
    depth["a"] = 5
    assert samples(m.text())[("cvtasks_queue_depth", (("model", "a"),))] == 5

    def broken() -> dict[str, int]:
        raise RuntimeError("boom")

    m.watch_queues(broken)
    m.watch_queues(lambda: {"b": 1})
    got = samples(m.text())
    assert got[("cvtasks_queue_depth", (("model", "a"),))] == 5 and got[("cvtasks_queue_depth", (("model", "b"),))] == 1


def test_gpu_memory_is_absent_without_cuda_and_read_per_device_with_it(monkeypatch):
    if not torch.cuda.is_available():
        assert gpu_memory() == {} and "cvtasks_gpu_memory_bytes" not in ServingMetrics().text()
    fake = {
        "is_available": lambda: True,
        "is_initialized": lambda: True,
        "device_count": lambda: 2,
        "memory_allocated": lambda i: 100 + i,
        "memory_reserved": lambda i: 200 + i,
    }
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    got = samples(ServingMetrics().text())
    assert got[("cvtasks_gpu_memory_bytes", (("device", "cuda:1"), ("kind", "allocated")))] == 101
    assert got[("cvtasks_gpu_memory_bytes", (("device", "cuda:0"), ("kind", "reserved")))] == 200
    # CUDA present but never used by this process: no context is created just to report zeros.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert gpu_memory() == {}


def test_the_rpc_record_collects_the_model_and_stage_timings_only_inside_an_rpc():
    m = ServingMetrics()
    result = BatchResult("value", started=10.0, finished=10.5, model="det")

    def outside() -> None:
        note_model("det")  # no RPC open: nothing to note, nothing raised
        observe_stages("det", stage_seconds(9.0, 9.5, result, 10.5))
        assert current_rpc() is None

    def inside() -> str:
        record = begin_rpc(m)
        note_model("det")
        observe_stages("det", stage_seconds(9.0, 9.5, result, 10.5))
        return record.model

    contextvars.copy_context().run(outside)
    assert "cvtasks_request_latency_seconds_count" not in m.text()
    assert contextvars.copy_context().run(inside) == "det"
    got = samples(m.text())
    for stage in STAGES:
        assert got[("cvtasks_request_latency_seconds_count", (("model", "det"), ("stage", stage)))] == 1
    assert got[("cvtasks_request_latency_seconds_sum", (("model", "det"), ("stage", "preprocess")))] == 0.5
    assert got[("cvtasks_request_latency_seconds_sum", (("model", "det"), ("stage", "queue")))] == 0.5
    assert got[("cvtasks_request_latency_seconds_sum", (("model", "det"), ("stage", "inference")))] == 0.5
    assert begin_rpc(None) is None


def test_stage_seconds_and_the_timings_proto_agree():
    t0 = time.perf_counter() - 1.0  # stamps of a request that began a second ago
    result = BatchResult(None, started=t0 + 0.010, finished=t0 + 0.030, model="m")
    seconds = stage_seconds(t0, t0 + 0.004, result, t0 + 0.030)
    assert seconds["preprocess"] == pytest.approx(0.004) and seconds["queue"] == pytest.approx(0.006)
    assert seconds["inference"] == pytest.approx(0.020)
    assert seconds["postprocess"] == pytest.approx(seconds["total"] - 0.030, abs=1e-3) and seconds["total"] >= 1.0
    proto = timings_proto(stage_seconds(t0, t0 + 0.004, result, t0 + 0.030))
    assert proto.decode_ms == pytest.approx(4.0) and proto.queue_ms == pytest.approx(6.0)
    assert proto.inference_ms == pytest.approx(20.0) and proto.total_ms >= 1000.0


def test_endpoint_on_port_zero_reports_its_port_and_serves_the_text():
    m = ServingMetrics()
    m.observe_batch("m", 2)
    endpoint = start_metrics_endpoint(m, 0, "127.0.0.1")
    try:
        assert endpoint.port > 0 and endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            body = response.read().decode()
        assert samples(body)[("cvtasks_batch_size_sum", (("model", "m"),))] == 2
        with pytest.raises(OSError, match="metrics-port"):  # the port is taken now
            start_metrics_endpoint(m, endpoint.port, "127.0.0.1")
    finally:
        endpoint.close()
    with pytest.raises(ValueError, match="0..65535"):
        start_metrics_endpoint(m, 70000)


def _serve_parser() -> argparse.ArgumentParser:
    from services.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser.add_subparsers().add_parser("serve"))
    return parser


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        (None, [], None),  # off by default
        ("9464", [], 9464),
        ("9464", ["--metrics-port", "off"], None),
        (None, ["--metrics-port", "0"], 0),
        ("", ["--metrics-port", "9100"], 9100),
    ],
)
def test_metrics_port_flag_and_env(monkeypatch, env, argv, expected):
    if env is None:
        monkeypatch.delenv("CVTASKS_METRICS_PORT", raising=False)
    else:
        monkeypatch.setenv("CVTASKS_METRICS_PORT", env)
    args = _serve_parser().parse_args(["serve", "--task", "detection", *argv])
    assert args.metrics_port == expected


@pytest.mark.parametrize("value", ["70000", "-1", "http"])
def test_a_bad_metrics_port_is_a_usage_error(monkeypatch, value, capsys):
    monkeypatch.delenv("CVTASKS_METRICS_PORT", raising=False)
    with pytest.raises(SystemExit):
        _serve_parser().parse_args(["serve", "--task", "detection", "--metrics-port", value])
    assert "0..65535" in capsys.readouterr().err
