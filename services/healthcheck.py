"""``python -m services.healthcheck [HOST:PORT]``: exit 0 when the server's gRPC health service
answers SERVING, else 1 (the container health check; health needs no token). When the server
has TLS (CVTASKS_TLS_CERT set), it checks over TLS, trusting CVTASKS_TLS_CA when set (the CA that
signed the server's certificate), else the server's certificate itself (self-signed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def healthy(target: str, *, timeout: float = 4.0) -> bool:
    root = os.environ.get("CVTASKS_TLS_CA") or os.environ.get("CVTASKS_TLS_CERT")
    if root:  # the certificate's names must include localhost
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(Path(root).read_bytes()),
                                      options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    return 0 if healthy(argv[0] if argv else "127.0.0.1:50051") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
