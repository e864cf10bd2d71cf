"""`cvtasks serve --workers 2` as a user runs it: two worker processes on one gRPC port and one HTTP
port (both chosen by the supervisor from port 0), under one supervisor. Each check reaches both
workers through fresh connections, told apart by the ``cvtasks-worker`` trailing metadata of
ListModels (or the worker field of the log lines)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.preprocessing import encode_image
from services.cli import build_parser
from services.client import CvtasksClient
from services.pb import models_pb2
from tests.e2e.cli_server import CLI, ENV, cli_server, server_log
from tests.web import call

LIST = "/cvtasks.v1.ModelService/ListModels"
CLASSIFY = "/cvtasks.v1.ClassificationService/Classify"


def fresh(address: str, **kwargs) -> CvtasksClient:
    """A client on its own TCP connection (grpc otherwise shares one between channels of a process),
    so that the kernel may hand it to either worker."""
    return CvtasksClient(address, timeout=60, channel_options=[("grpc.use_local_subchannel_pool", 1)], **kwargs)


def by_worker(address: str, calls: int = 16) -> dict[str, set[tuple[str, ...]]]:
    """Worker index -> the model lists it answered, over ``calls`` fresh connections."""
    seen: dict[str, set[tuple[str, ...]]] = {}
    for _ in range(calls):
        with fresh(address) as client:
            response, rpc = client.models.ListModels.with_call(models_pb2.ListModelsRequest(), timeout=30)
        worker = dict(rpc.trailing_metadata())["cvtasks-worker"]
        seen.setdefault(worker, set()).add(tuple(sorted(m.name for m in response.models)))
    return seen


def healths(address: str, calls: int = 12) -> set[str]:
    out = set()
    for _ in range(calls):
        with fresh(address) as client:
            try:
                out.add(client.health())
            except grpc.RpcError as exc:  # a connection that landed on the dying worker
                out.add(exc.code().name)
    return out


def requests_total(metrics_url: str, method: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "cvtasks_requests_total" and s.labels["method"] == method and s.labels["status"] == "OK"
    )


def classify_at_once(address: str, image: bytes, count: int, then=None) -> list[object]:
    """``count`` Classify calls at once, each on a fresh connection; ``then()`` runs 0.5 s after they
    are sent (they wait for company meanwhile). Number of classes answered, or the status code."""
    answers: list[object] = []

    def classify() -> None:
        with fresh(address) as client:
            try:
                answers.append(len(client.classify(image).classes))
            except grpc.RpcError as exc:
                answers.append(exc.code())

    threads = [threading.Thread(target=classify) for _ in range(count)]
    for thread in threads:
        thread.start()
    if then is not None:
        time.sleep(0.5)
        then()
    for thread in threads:
        thread.join(60)
    return answers


def worker_pids(log: str) -> list[int]:
    """Pids of the workers started so far, in order, from the supervisor's log lines."""
    lines = [json.loads(line) for line in log.splitlines() if '"msg": "worker started"' in line]
    return [line["pid"] for line in lines]


@pytest.fixture(scope="module")
def two_models(classifier_store, tmp_path_factory):
    """A store with `tiny-classifier` and a copy named `other-classifier` (the one the tests load)."""
    store = tmp_path_factory.mktemp("workers-store")
    shutil.copytree(classifier_store / "tiny-classifier", store / "tiny-classifier")
    shutil.copytree(classifier_store / "tiny-classifier", store / "other-classifier")
    config = store / "other-classifier" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "name": "other-classifier"}))
    return store


@pytest.fixture(scope="module")
def served(two_models, tmp_path_factory):
    """One two-worker server for the module's tests, which run in order: the last two kill a worker,
    then stop the server. A batch waits up to 1 s for company (up to 16 requests), so that requests are still queued
    when the server is told to stop."""
    log_dir = tmp_path_factory.mktemp("workers-log")
    extra = ("--models", "tiny-classifier", "--workers", "2", "--metrics-port", "0", "--http-port", "0")
    extra += ("--max-delay-ms", "1000", "--max-batch-size", "16")
    with cli_server("classification", two_models, log_dir, *extra) as (proc, address):
        yield proc, address, log_dir


def test_load_and_unload_reach_every_worker(served):
    _, address, _ = served
    assert by_worker(address) == {"0": {("tiny-classifier",)}, "1": {("tiny-classifier",)}}
    with fresh(address) as client:
        info = client.load_model("other-classifier", make_default=True)
        assert info.name == "other-classifier" and info.is_default
        with pytest.raises(grpc.RpcError) as unknown:  # refused by the worker it lands on: nothing fans out
            client.load_model("no-such-model")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in unknown.value.details()
    both = {("other-classifier", "tiny-classifier")}
    assert by_worker(address) == {"0": both, "1": both}
    with fresh(address) as client:  # every worker's default moved: a request naming no model gets it
        for _ in range(6):
            with fresh(address) as other:
                assert other.get_model("").name == "other-classifier"
        assert client.unload_model("other-classifier").default_model == "tiny-classifier"
    assert by_worker(address) == {"0": {("tiny-classifier",)}, "1": {("tiny-classifier",)}}


def test_metrics_are_summed_over_the_workers(served):
    _, address, _ = served
    before = requests_total(address.metrics_url, LIST)
    seen = by_worker(address, calls=10)
    assert set(seen) == {"0", "1"}  # both counted some
    image = encode_image(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), "png")
    classify_before = requests_total(address.metrics_url, CLASSIFY)
    assert all(answer > 0 for answer in classify_at_once(address, image, 6))
    deadline = time.monotonic() + 10
    while requests_total(address.metrics_url, LIST) != before + 10 and time.monotonic() < deadline:
        time.sleep(0.2)  # counted when each RPC's log line is written, just after its answer
    assert requests_total(address.metrics_url, LIST) == before + 10
    assert requests_total(address.metrics_url, CLASSIFY) == classify_before + 6


def test_the_http_port_is_shared_and_ready_only_when_every_worker_is(served):
    _, address, _ = served
    assert address.http_url.startswith("http://127.0.0.1:")
    assert {call(f"{address.http_url}/v2/health/ready").status for _ in range(8)} == {200}


def test_a_killed_worker_is_restarted_with_the_changes_made_before_and_serving_continues(served):
    proc, address, log_dir = served
    with fresh(address) as client:
        client.load_model("other-classifier")  # made before the kill: the new worker must replay it
    victim = worker_pids(server_log(log_dir, "classification"))[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.5)
    assert "NOT_SERVING" in healths(address)  # the surviving worker: not every worker is SERVING
    deadline = time.monotonic() + 120
    while healths(address) != {"SERVING"} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert healths(address) == {"SERVING"}
    both = {("other-classifier", "tiny-classifier")}
    assert by_worker(address) == {"0": both, "1": both}
    log = server_log(log_dir, "classification")
    assert f'"msg": "worker exited; restarting it", "worker": 0, "pid": {victim}, "code": -9' in log
    assert len(worker_pids(log)) == 3 and proc.poll() is None


def test_sigterm_drains_every_worker(served):
    """Requests queued in both workers (their batches wait for company) all finish after SIGTERM."""
    proc, address, log_dir = served
    image = encode_image(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8), "png")
    answers = classify_at_once(address, image, 12, then=lambda: proc.send_signal(signal.SIGTERM))
    assert proc.wait(timeout=60) == 0
    assert len(answers) == 12 and all(isinstance(a, int) and a > 0 for a in answers), answers
    lines = [json.loads(line) for line in server_log(log_dir, "classification").splitlines() if line.startswith("{")]
    stopped_at = next(i for i, line in enumerate(lines) if line["msg"] == "stopping" and "worker" not in line)
    drained = {line["worker"] for line in lines[stopped_at:] if line.get("method") == CLASSIFY}
    assert drained == {0, 1}  # both workers had requests in flight at SIGTERM, and answered them
    assert sum(line["msg"] == "worker stopped" for line in lines) == 2 and lines[-1]["msg"] == "stopped"


def test_the_worker_count_comes_from_the_flag_or_the_environment(monkeypatch, capsys):
    argv = ["serve", "--task", "classification"]
    assert build_parser(argv).parse_args(argv).workers == 1
    assert build_parser(argv).parse_args([*argv, "--workers", "3"]).workers == 3
    monkeypatch.setenv("CVTASKS_WORKERS", "2")
    assert build_parser(argv).parse_args(argv).workers == 2
    with pytest.raises(SystemExit):
        build_parser(argv).parse_args([*argv, "--workers", "0"])
    assert "expected a number of worker processes >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.slow  # three more Python processes that import torch: about 30 s on the loaded 2-core CPU
def test_a_worker_that_cannot_start_stops_the_server_with_the_reason(classifier_store, tmp_path):
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        done = subprocess.run(
            [*CLI, "serve", "--task", "classification", "--model-store", str(classifier_store)]
            + ["--models", "no-such-model", "--host", "127.0.0.1", "--port", "0", "--workers", "2"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=ENV,
            timeout=120,
        )
    assert done.returncode == 1 and "serving" not in done.stdout
    text = log.read_text()
    assert "cvtasks serve: error: worker " in text and "exited with code 1 while starting" in text
    assert "Unknown model `no-such-model`" in text  # the worker's own error, in the same log
