"""`cvtasks serve --http-port` as a user runs it: the HTTP port beside gRPC in one process, curl-style
requests, and SIGTERM draining an HTTP request in flight before the process exits."""

from __future__ import annotations

import signal
import threading
import time

from models.preprocessing import decode_image
from services.cli import build_parser
from tests.e2e.cli_server import cli_server, server_log
from tests.web import call


def test_serve_http_beside_grpc_and_sigterm_drains_the_request_in_flight(generator_store, tmp_path):
    # A batch waits 1.5 s for company, so the request is still queued when SIGTERM comes.
    with cli_server("generation", generator_store, tmp_path, "--http-port", "0", "--max-delay-ms", "1500") as (
        proc,
        address,
    ):
        assert address.http_url.startswith("http://127.0.0.1:")
        assert call(f"{address.http_url}/v2/health/ready").status == 200
        replies = {}
        url = f"{address.http_url}/v1/models/tiny-generator/generate"
        thread = threading.Thread(
            target=lambda: replies.update(
                grid=call(url, method="POST", query={"count": 4}, headers={"Accept": "image/png"})
            )
        )
        thread.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert proc.wait(timeout=30) == 0
    reply = replies["grid"]
    assert reply.status == 200 and reply.headers["content-type"] == "image/png"
    assert decode_image(reply.body).shape == (2 * 34 + 2, 2 * 34 + 2, 3)  # 2 x 2 images of 32 px, 2 px apart
    log = server_log(tmp_path, "generation")
    assert '"msg": "stopped"' in log and '"path": "/v1/models/tiny-generator/generate", "status": 200' in log


def test_the_http_port_comes_from_the_flag_or_the_environment(monkeypatch):
    argv = ["serve", "--task", "detection"]
    assert build_parser(argv).parse_args(argv).http_port is None  # off by default
    monkeypatch.setenv("CVTASKS_HTTP_PORT", "8080")
    assert build_parser(argv).parse_args(argv).http_port == 8080
    assert build_parser(argv).parse_args([*argv, "--http-port", "off"]).http_port is None
