"""The ``/metrics`` endpoint of a serving process: Prometheus text over HTTP, protected as the gRPC port is.

- TLS on (``--tls-cert``/``--tls-key``): HTTPS with the server's certificate; mutual TLS
  (``--tls-client-ca``): a client certificate from that CA too.
- Tokens on: ``Authorization: Bearer <token>`` (a user or admin token), else 401.
- Neither: plain HTTP, open to whoever reaches the port (as the gRPC port is), on ``--metrics-host``
  (default ``--host``).

The TLS handshake runs in each request's own thread, with a timeout, so a client that connects
and stalls holds up only itself.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from services.metrics import ServingMetrics
from services.security import SecurityConfig, bearer_token, token_matches

log = logging.getLogger("cvtasks.metrics")

REQUEST_TIMEOUT_S = 10.0  # a scrape connection that sends nothing for this long is dropped
WsgiApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — one line per scrape is noise
        pass


class _Server(ThreadingWSGIServer):
    """prometheus_client's threading WSGI server, plus TLS done per request thread and a socket timeout."""

    ssl_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        sock.settimeout(REQUEST_TIMEOUT_S)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            return super().finish_request(request, client_address)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:  # plain HTTP on the TLS port, no client certificate, a stall
            log.debug("metrics TLS handshake failed", extra={"peer": str(client_address), "error": str(exc)})
            return None
        try:
            return super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that hangs up: not our error
        log.debug("metrics request failed", extra={"peer": str(client_address)}, exc_info=True)


def _with_token(app: WsgiApp, tokens: tuple[str, ...]) -> WsgiApp:
    """``app``, answering 401 to a request without one of ``tokens`` as its bearer token."""

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        token = bearer_token([("authorization", environ.get("HTTP_AUTHORIZATION", ""))])
        if token is not None and token_matches(token, tokens):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", 'Bearer realm="cvtasks metrics"')],
        )
        return [
            b"this endpoint needs a token: send the header 'Authorization: Bearer <token>' "
            b"(a user or admin token of the server)\n"
        ]

    return guarded


def metrics_app(registry: CollectorRegistry, security: SecurityConfig) -> WsgiApp:
    """The WSGI app of ``/metrics``: the registry's text, behind the server's tokens when it has any."""
    app = make_wsgi_app(registry)
    tokens = (*security.tokens, *security.admin_tokens)
    return _with_token(app, tokens) if tokens else app


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` server (a daemon thread); ``port`` is the bound one."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _family(host: str, port: int) -> socket.AddressFamily:
    infos = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]


def start_metrics_endpoint(
    metrics: ServingMetrics | CollectorRegistry,
    port: int,
    host: str = "0.0.0.0",
    security: SecurityConfig = SecurityConfig(),
) -> MetricsEndpoint:
    """Serve ``metrics`` (a process's, or a registry: the sum over workers) on ``host:port`` (0 = any
    free port; read ``.port``), with the TLS and the tokens of ``security``."""
    registry = metrics.registry if isinstance(metrics, ServingMetrics) else metrics
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port must be in 0..65535 (0 = any free port), got {port}")

    class Server(_Server):
        address_family = _family(host, port)
        ssl_context = security.ssl_context()

    try:
        server = make_server(host, port, metrics_app(registry, security), Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise OSError(
            f"could not bind the metrics endpoint on {host}:{port} ({exc}); "
            "choose another --metrics-port or 0 for any free port"
        ) from exc
    thread = threading.Thread(target=server.serve_forever, name="cvtasks-metrics", daemon=True)
    thread.start()
    endpoint = MetricsEndpoint(server, thread, host, server.server_port, tls=Server.ssl_context is not None)
    log.info("metrics endpoint", extra={"url": endpoint.url, "tokens": bool(security.tokens)})
    return endpoint
