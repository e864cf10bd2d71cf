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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.calls import GONE, CallLog, LogLimiter, checked_request, checked_requests, guarded_deserializer
from services.errors import status_for, status_message
from services.metrics import ServingMetrics
from services.security import SecurityConfig, server_interceptors

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
    health_port: int | None = None  # also serve gRPC health alone, in plaintext, on this port (0: any free port)
    http_port: int | None = None  # also serve HTTP/REST (services/http.py) on this port of ``host`` (0: any free port)
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the HTTP port (CORS); none: CORS off
    # Several worker processes share the ports (SO_REUSEPORT; services/workers.py binds them first).
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        for name in ("health_port", "http_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be in 0..65535 (0 = any free port), got {value}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")


class Servicer(Protocol):
    """What a task's servicer offers the server: its full service name and how to attach itself."""

    service_name: str

    def add_to_server(self, server: grpc.aio.Server) -> None: ...


# --------------------------------------------------------------------------- error interceptor


async def _abort(context: grpc.aio.ServicerContext, call: CallLog, exc: Exception) -> None:
    """Answer ``exc`` with its status (services.errors), unless the client is already gone."""
    call.failed(exc)
    if call.ended:  # the RPC is over: its context must not be used (see services/calls.py)
        return
    code = status_for(exc)
    if code is None:  # our bug: the client learns the type only; the rpc log line has the traceback
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the details"
        )
    await context.abort(code, status_message(exc))


def _request_of(inner: Callable, request_or_iterator: Any, request_streaming: bool) -> Any:
    """The request (stream) the handler gets: a message that did not parse raises InvalidInputError,
    except for a handler that refuses the call whatever it asked (security's refusals come first)."""
    if getattr(inner, "ignores_request", False):
        return request_or_iterator
    if request_streaming:
        return checked_requests(request_or_iterator)
    return checked_request(request_or_iterator)


def _wrap_unary_response(
    method: str, inner: Callable, interceptor: ErrorInterceptor, request_streaming: bool
) -> Callable:
    async def behavior(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        call = CallLog.begin(method, context, interceptor.metrics)
        try:
            response = await inner(_request_of(inner, request_or_iterator, request_streaming), context)
            call.ok(context)
            return response
        except grpc.aio.AbortError:
            call.aborted(context)
            raise
        except GONE:
            call.gone()
            raise
        except Exception as exc:  # noqa: BLE001 — mapped to a status here, once for every service
            await _abort(context, call, exc)
        finally:
            call.end(interceptor.limiter)

    return behavior


_closing: set[asyncio.Task] = set()  # close() tasks of abandoned response streams (asyncio keeps weak refs only)


async def _close(responses: Any, method: str) -> None:
    try:
        await responses.aclose()  # the handler's own cleanup (ordered_stream cancels its queued items)
    except Exception:  # noqa: BLE001 — a failing cleanup must not hide the RPC's outcome
        log.exception("closing the response stream failed", extra={"method": method})


def _abandoned(call: CallLog, responses: Any, limiter: LogLimiter) -> None:
    """Done callback of a response-stream RPC: if the stream did not finish inside the RPC (the client went
    away while the server waited to write), count and log it now and close the handler's stream. Nothing
    would otherwise until the garbage collector finalizes the suspended generator (maybe never, maybe
    minutes later). The context is not used: the call is being released."""
    if call.done:
        return
    call.gone()
    call.end(limiter)
    task = asyncio.ensure_future(_close(responses, call.method))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _wrap_stream_response(
    method: str, inner: Callable, interceptor: ErrorInterceptor, request_streaming: bool
) -> Callable:
    if not inspect.isasyncgenfunction(inner):  # a context.write()-style handler (e.g. health Watch)
        return _wrap_unary_response(method, inner, interceptor, request_streaming)

    async def behavior(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        call = CallLog.begin(method, context, interceptor.metrics)
        responses = inner(_request_of(inner, request_or_iterator, request_streaming), context)
        context.add_done_callback(lambda _: _abandoned(call, responses, interceptor.limiter))
        try:
            async for response in responses:
                yield response
            call.ok(context)
        except grpc.aio.AbortError:
            call.aborted(context)
            raise
        except GONE:  # GeneratorExit: closed after the RPC ended (_abandoned has counted it)
            call.gone()
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, call, exc)
        finally:
            if not call.done:  # finished inside the RPC: the done callback will find nothing to do
                await _close(responses, method)
                call.end(interceptor.limiter)

    return behavior


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors (services.errors.status_for) to statuses, refuses requests that are not
    valid protobufs (INVALID_ARGUMENT) and logs one line per RPC (refusals rate-limited per method
    and status, see services.calls.LogLimiter); with ``metrics``, also counts each RPC by model,
    method and status (services.metrics)."""

    def __init__(self, metrics: ServingMetrics | None = None, limiter: LogLimiter | None = None) -> None:
        self.metrics = metrics
        self.limiter = limiter or LogLimiter()

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        codec = {
            "request_deserializer": guarded_deserializer(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(method, handler.unary_unary, self, False), **codec
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(method, handler.unary_stream, self, False), **codec
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(method, handler.stream_unary, self, True), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(method, handler.stream_stream, self, True), **codec
        )


# --------------------------------------------------------------------------- server


def new_health() -> health.aio.HealthServicer:
    return health.aio.HealthServicer()


async def set_health(health_servicer: health.aio.HealthServicer, names: Sequence[str], serving: bool) -> None:
    """Set the overall ("") status and each service's to SERVING or NOT_SERVING."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *names):
        await health_servicer.set(name, status)


class Readiness:
    """SERVING or not, as health (gRPC, and the HTTP ready route) reports it: this process's models
    are warm and it is not draining (``local``), and, in a ``--workers`` server, every other worker
    is SERVING too (``peers``; always True in a single process)."""

    def __init__(self) -> None:
        self.health = new_health()
        self.names: list[str] = []
        self.local = False
        self.peers = True

    @property
    def serving(self) -> bool:
        return self.local and self.peers

    async def update(self, *, local: bool | None = None, peers: bool | None = None) -> None:
        self.local = self.local if local is None else local
        self.peers = self.peers if peers is None else peers
        await set_health(self.health, self.names, serving=self.serving)


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
        ("grpc.so_reuseport", int(config.reuse_port)),
    ]
    # Tokens, or the guard of the admin RPCs, inside the error interceptor: refused calls are logged and counted.
    interceptors = [ErrorInterceptor(metrics), *server_interceptors(config.security, config.host)]
    if refusal := config.security.management_refusal(config.host):
        log.info("LoadModel and UnloadModel closed", extra={"reason": refusal})
    server = grpc.aio.server(
        interceptors=interceptors, options=options, maximum_concurrent_rpcs=config.max_concurrent_rpcs
    )
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


async def start_health_server(
    config: ServerConfig, health_servicer: health.aio.HealthServicer, metrics: ServingMetrics | None = None
) -> tuple[grpc.aio.Server, int]:
    """A started server with only ``health_servicer``, in plaintext on ``config.host:config.health_port``:
    for probes that hold no client certificate when the main port needs one (mutual TLS)."""
    options = [("grpc.so_reuseport", int(config.reuse_port))]
    server = grpc.aio.server(interceptors=[ErrorInterceptor(metrics)], options=options)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{config.host}:{config.health_port}")
    if port == 0:
        raise OSError(
            f"could not bind the health port {config.host}:{config.health_port}; choose another "
            "--health-port or 0 for any free port"
        )
    await server.start()
    log.info("health port", extra={"port": port})
    return server, port


async def serve(
    config: ServerConfig,
    servicers: Sequence[Servicer],
    *,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    on_ready: Callable[[int], None] | None = None,
    on_health: Callable[[int], None] | None = None,
    stop_event: asyncio.Event | None = None,
    metrics: ServingMetrics | None = None,
    http_app: Any = None,
    on_http: Callable[[int], None] | None = None,
    on_serving: Callable[[bool], None] | None = None,
    readiness: Readiness | None = None,
) -> None:
    """Listen, run ``startup`` (load + warm up models), report SERVING, and run until SIGTERM/SIGINT
    (or ``stop_event``); then NOT_SERVING, finish in-flight requests within grace_s, ``shutdown``.
    With ``config.health_port``, health is also served alone on that port (``on_health`` gets it).
    With ``config.http_port``, ``http_app`` (an ASGI app: services/http.py) is served on that port,
    in this event loop, and drained with the gRPC server (``on_http`` gets the port);
    ``on_serving`` hears when this process's SERVING begins (True) and ends (False); ``readiness``
    (default a new one) is what health reports."""
    readiness = readiness or Readiness()
    readiness.names = [s.service_name for s in servicers]
    health_servicer = readiness.health
    server, port = await create_server(config, servicers, health_servicer=health_servicer, metrics=metrics)
    health_server = http = None
    if config.health_port is not None:
        health_server, health_port = await start_health_server(config, health_servicer, metrics)
        if on_health is not None:
            on_health(health_port)
    if config.http_port is not None and http_app is not None:
        from services.http import HttpEndpoint  # uvicorn and FastAPI load only for a server that serves HTTP

        http = HttpEndpoint(
            http_app, config.host, config.http_port, config.security, config.grace_s, reuse_port=config.reuse_port
        )
        http_port = await http.start()
        if on_http is not None:
            on_http(http_port)
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
        await readiness.update(local=True)
        if on_serving is not None:
            on_serving(True)
        log.info("serving", extra={"port": port})
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
    finally:
        log.info("stopping", extra={"grace_s": config.grace_s})
        await readiness.update(local=False)
        if on_serving is not None:
            on_serving(False)
        await asyncio.gather(server.stop(config.grace_s), *([http.stop()] if http is not None else []))
        if health_server is not None:
            await health_server.stop(0)
        if shutdown is not None:
            await shutdown()
        log.info("stopped")
