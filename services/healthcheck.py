"""``python -m services.healthcheck [--plaintext] [HOST:PORT]``: exit 0 when the server's gRPC health
service answers SERVING, else 1 (the container health check; health needs no token).

Without a target it checks this machine's server: the plaintext health port when
CVTASKS_HEALTH_PORT is set (``cvtasks serve --health-port``), else 127.0.0.1:$CVTASKS_PORT (50051).
On the main port, when the server has TLS (CVTASKS_TLS_CERT set), it checks over TLS, trusting
CVTASKS_TLS_CA when set (the CA that signed the server's certificate), else the server's
certificate itself (self-signed). Under mutual TLS the main port also wants a client certificate,
which this check does not hold: serve with --health-port (CVTASKS_HEALTH_PORT) for it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def healthy(target: str, *, timeout: float = 4.0, plaintext: bool = False) -> bool:
    root = None if plaintext else os.environ.get("CVTASKS_TLS_CA") or os.environ.get("CVTASKS_TLS_CERT")
    if root:  # the certificate's names must include localhost
        channel = grpc.secure_channel(
            target,
            grpc.ssl_channel_credentials(Path(root).read_bytes()),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def default_target() -> tuple[str, bool]:
    """(target, plaintext) of this machine's server, from CVTASKS_HEALTH_PORT or CVTASKS_PORT."""
    health_port = os.environ.get("CVTASKS_HEALTH_PORT", "").strip()
    if health_port and health_port.lower() not in ("off", "none"):
        return f"127.0.0.1:{health_port}", True
    return f"127.0.0.1:{os.environ.get('CVTASKS_PORT', '').strip() or '50051'}", False


def main(argv: list[str]) -> int:
    plaintext = "--plaintext" in argv
    targets = [a for a in argv if a != "--plaintext"]
    if targets:
        return 0 if healthy(targets[0], plaintext=plaintext) else 1
    target, health_port = default_target()
    return 0 if healthy(target, plaintext=plaintext or health_port) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
