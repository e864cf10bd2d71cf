"""Run a full server in a background thread (demo, benchmarks, tests of the CLI client)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from services.app import build_app, run_app
from services.host import ServingConfig
from services.security import SecurityConfig
from services.server import ServerConfig


class ServerAddress(str):
    """ "HOST:PORT" of a running server (a plain str for every caller), plus ``metrics_url``:
    its Prometheus endpoint, or None when it serves no metrics, ``health_address``: "HOST:PORT"
    of its plaintext health port, or None, and ``http_url``: the base URL of its HTTP/REST port
    ("http://HOST:PORT", https with TLS), or None."""

    metrics_url: str | None = None
    health_address: str | None = None
    http_url: str | None = None


@contextlib.contextmanager
def running_server(
    *,
    task: str | Sequence[str],
    model_store: str | Path,
    models: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    ready_timeout_s: float = 300.0,
    grace_s: float = 5.0,
    metrics_port: int | None = None,
    health_port: int | None = None,
    http_port: int | None = None,
    cors_origins: tuple[str, ...] = (),
    security: SecurityConfig = SecurityConfig(),
    max_message_bytes: int | None = None,
    **serving: Any,
) -> Iterator[ServerAddress]:
    """Serve ``task`` (or several) from ``model_store`` until the block ends; yields "HOST:PORT" once SERVING.
    On exit, in-flight calls get ``grace_s`` seconds before they are cancelled. With ``metrics_port``
    (0 = any free port) the Prometheus endpoint runs too; its URL is the address's ``metrics_url``; with
    ``health_port``, so does the plaintext health port (``health_address``), and with ``http_port``
    HTTP/REST (``http_url``)."""
    app = build_app(
        [task] if isinstance(task, str) else list(task), model_store, ServingConfig(**serving), models=models
    )
    ready, stopped = threading.Event(), threading.Event()
    state: dict[str, Any] = {}

    def on_ready(bound: int) -> None:
        state["port"] = bound
        ready.set()

    def main() -> None:
        async def go() -> None:
            state["stop"] = asyncio.Event()
            state["loop"] = asyncio.get_running_loop()
            limit = {} if max_message_bytes is None else {"max_message_bytes": max_message_bytes}
            ports = {"host": host, "port": port, "health_port": health_port, "http_port": http_port}
            config = ServerConfig(**ports, grace_s=grace_s, security=security, cors_origins=cors_origins, **limit)
            await run_app(
                app,
                config,
                on_ready=on_ready,
                stop_event=state["stop"],
                metrics_port=metrics_port,
                on_metrics=lambda url: state.update(metrics_url=url),
                on_health=lambda bound: state.update(health_address=f"{host}:{bound}"),
                on_http=lambda bound: state.update(
                    http_url=f"{'https' if security.tls_cert else 'http'}://{host}:{bound}"
                ),
            )

        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 — handed to the waiting thread
            state["error"] = exc
        finally:
            ready.set()
            stopped.set()

    thread = threading.Thread(target=main, name="cvtasks-server", daemon=True)
    thread.start()
    ready.wait(ready_timeout_s)
    if "error" in state or "port" not in state:
        raise RuntimeError(f"server did not start: {state.get('error', 'timed out')}") from state.get("error")
    try:
        address = ServerAddress(f"{host}:{state['port']}")
        address.metrics_url = state.get("metrics_url")
        address.health_address = state.get("health_address")
        address.http_url = state.get("http_url")
        yield address
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        stopped.wait(60)
