"""The grpc.aio server: health, reflection, message limits, one error interceptor, graceful stop.

``create_server(config, servicers) -> (server, port)`` builds and binds (port 0 picks a free
port); ``serve(...)`` runs until SIGTERM/SIGINT, then reports NOT_SERVING, lets in-flight
requests finish within ``grace_s``, and stops.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.errors import status_for
from services.security import AuthInterceptor, SecurityConfig
from services.metrics import RpcRecord, ServingMetrics, begin_rpc

log = logging.getLogger("cvtasks.server")

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the server listens. ``port=0`` binds a free port (tests)."""

    host: str = "0.0.0.0"
    port: int = 50051
    max_message_bytes: int = 64 * MiB
    grace_s: float = 10.0
    # RPCs in flight at once (a stream counts once); beyond it grpc refuses new calls with
    # RESOURCE_EXHAUSTED before reading them. None: no bound.
    max_concurrent_rpcs: int | None = None
    security: SecurityConfig = field(default_factory=SecurityConfig)  # TLS and tokens (none by default)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")


class Servicer(Protocol):
    """What a task's servicer offers the server: its full service name and how to attach itself."""

    service_name: str

    def add_to_server(self, server: grpc.aio.Server) -> None: ...


# --------------------------------------------------------------------------- error interceptor


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    code = status_for(exc)
    if code is None:
        log.exception("unexpected error", exc_info=exc)
        # The client learns that it is our bug, not what it was: the details are in the server log.
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"internal error ({type(exc).__name__}); the server log has the details")
    await context.abort(code, str(exc))


def _status_name(context: grpc.aio.ServicerContext, failure: BaseException | None) -> str:
    if isinstance(failure, asyncio.CancelledError):  # the client went away or its deadline passed
        remaining = context.time_remaining() if hasattr(context, "time_remaining") else None
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    code = context.code() if hasattr(context, "code") else None
    if failure is not None and code in (None, grpc.StatusCode.OK):
        code = status_for(failure) or grpc.StatusCode.INTERNAL
    return getattr(code, "name", "OK") if code is not None else "OK"


def _log_rpc(method: str, context: grpc.aio.ServicerContext, started: float, failure: BaseException | None,
             record: RpcRecord | None) -> None:
    name = _status_name(context, failure)
    level = logging.INFO if name == "OK" else logging.WARNING
    extra = {"method": method, "status": name, "peer": context.peer(),
             "duration_ms": round((time.perf_counter() - started) * 1000, 2)}
    if record is not None:
        extra["model"] = record.model
        record.metrics.observe_rpc(model=record.model, method=method, status=name)
    log.log(level, "rpc", extra=extra)


def _wrap_unary_response(method: str, inner: Callable, metrics: ServingMetrics | None) -> Callable:
    async def behavior(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        started, failure, record = time.perf_counter(), None, begin_rpc(metrics)
        try:
            return await inner(request_or_iterator, context)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        except Exception as exc:  # noqa: BLE001 — mapped to a status here, once for every service
            failure = exc
            await _abort(context, exc)
        finally:
            _log_rpc(method, context, started, failure, record)

    return behavior


def _wrap_stream_response(method: str, inner: Callable, metrics: ServingMetrics | None) -> Callable:
    if not inspect.isasyncgenfunction(inner):  # a context.write()-style handler (e.g. health Watch)
        return _wrap_unary_response(method, inner, metrics)

    async def behavior(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        started, failure, record = time.perf_counter(), None, begin_rpc(metrics)
        try:
            async for response in inner(request_or_iterator, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        except Exception as exc:  # noqa: BLE001
            failure = exc
            await _abort(context, exc)
        finally:
            _log_rpc(method, context, started, failure, record)

    return behavior


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors (services.errors.status_for) to statuses and logs one line per RPC;
    with ``metrics``, also counts each RPC by model, method and status (services.metrics)."""

    def __init__(self, metrics: ServingMetrics | None = None) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        codec = {"request_deserializer": handler.request_deserializer,
                 "response_serializer": handler.response_serializer}
        m = self.metrics
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary_response(method, handler.unary_unary, m), **codec)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream_response(method, handler.unary_stream, m), **codec)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary_response(method, handler.stream_unary, m), **codec)
        return grpc.stream_stream_rpc_method_handler(_wrap_stream_response(method, handler.stream_stream, m), **codec)


# --------------------------------------------------------------------------- server


def new_health() -> health.aio.HealthServicer:
    return health.aio.HealthServicer()


async def set_health(health_servicer: health.aio.HealthServicer, names: Sequence[str], serving: bool) -> None:
    """Set the overall ("") status and each service's to SERVING or NOT_SERVING."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *names):
        await health_servicer.set(name, status)


async def create_server(
    config: ServerConfig,
    servicers: Sequence[Servicer],
    *,
    health_servicer: health.aio.HealthServicer | None = None,
    metrics: ServingMetrics | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A bound (not started) server with ``servicers``, health (NOT_SERVING until told) and reflection;
    RPCs are counted in ``metrics`` when given."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor(metrics)]
    if config.security.auth_enabled:  # inside the error interceptor, so refused calls are logged and counted
        interceptors.append(AuthInterceptor(config.security))
    server = grpc.aio.server(interceptors=interceptors, options=options,
                             maximum_concurrent_rpcs=config.max_concurrent_rpcs)
    names = [s.service_name for s in servicers]
    for servicer in servicers:
        servicer.add_to_server(server)
    health_servicer = health_servicer or new_health()
    await set_health(health_servicer, names, serving=False)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection([*names, health_name, reflection.SERVICE_NAME], server)
    credentials = config.security.credentials()
    address = f"{config.host}:{config.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}; is the port in use?")
    return server, port


async def serve(
    config: ServerConfig,
    servicers: Sequence[Servicer],
    *,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    on_ready: Callable[[int], None] | None = None,
    stop_event: asyncio.Event | None = None,
    metrics: ServingMetrics | None = None,
) -> None:
    """Listen, run ``startup`` (load + warm up models), report SERVING, and run until SIGTERM/SIGINT
    (or ``stop_event``); then NOT_SERVING, finish in-flight requests within grace_s, ``shutdown``."""
    health_servicer = new_health()
    server, port = await create_server(config, servicers, health_servicer=health_servicer, metrics=metrics)
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    await server.start()
    log.info("listening", extra={"port": port, "services": [s.service_name for s in servicers]})
    try:
        if startup is not None:
            await startup()
        await set_health(health_servicer, [s.service_name for s in servicers], serving=True)
        log.info("serving", extra={"port": port})
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
    finally:
        log.info("stopping", extra={"grace_s": config.grace_s})
        await set_health(health_servicer, [s.service_name for s in servicers], serving=False)
        await server.stop(config.grace_s)
        if shutdown is not None:
            await shutdown()
        log.info("stopped")
