"""HTTP/REST on the serving process: a FastAPI app on uvicorn, in the gRPC server's event loop.

The routes are codecs over the same request pipeline, model hosts and batchers as gRPC (HTTP and
gRPC requests share batches): the KServe v2 REST routes (services/kserve_rest.py) and the typed
routes for people (services/http_typed.py). This module holds what every route shares, as the
gRPC interceptors do for RPCs:

- bearer tokens from ``Authorization`` when the server has tokens (health routes, the OpenAPI
  schema and the docs page open), checked before the body is read: 401 otherwise;
- the body limit (the gRPC message limit, ``--max-message-mb``): a larger Content-Length is
  refused at once with 413, a body without one is counted while it streams in and refused at
  the limit, before it is read in full;
- domain errors mapped to HTTP statuses in one place (services/errors.py ``http_status_for``),
  answered as ``{"error": message, "code": "INVALID_ARGUMENT"}``;
- one log line and one ``cvtasks_requests_total`` count per request (``method`` "POST
  /v1/models/{name}/detect", the route's template; ``status`` the HTTP status code), on the
  process's Prometheus registry; the pipeline's stage timings land there as gRPC's do;
- TLS with the server's certificate (mutual TLS: a client certificate from its CA);
- graceful drain: ``stop`` lets requests in flight finish within the grace period;
- CORS only for the origins given (``cvtasks serve --cors-origin``), off by default;
- the browser page at ``/`` (services/http_page.py).

``HttpEndpoint.start`` binds (port 0: a free port, read ``.port``) and serves on the running loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import CvtasksError
from services.calls import LogLimiter
from services.errors import PayloadTooLargeError, http_status_for, status_for, status_message
from services.http_page import add_page
from services.metrics import ServingMetrics, begin_rpc
from services.security import SecurityConfig, bearer_token, token_matches

log = logging.getLogger("cvtasks.http")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = ("/v2/health/", "/docs", "/openapi.json", "/ui/")  # answered without a token, as is the page at /
ERROR_KEY = "cvtasks.error"  # where an error handler leaves the message for the request's log line


def error_body(exc: BaseException) -> dict[str, str]:
    """What a failed request answers: the message (tritonclient reads ``error``) and the gRPC code name."""
    code = status_for(exc)
    return {"error": status_message(exc), "code": code.name if code else "INTERNAL"}


async def _send_json(send: Send, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]] = ()) -> None:
    response = JSONResponse(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> MutableMapping[str, Any]:
    return {"type": "http.disconnect"}


# --------------------------------------------------------------------------- middleware (pure ASGI)


class BodyLimit:
    """413 for a body over ``limit`` bytes: by Content-Length before anything is read, or while
    it streams in (the app's ``receive`` raises PayloadTooLargeError at the limit)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    def _error(self, size: str) -> PayloadTooLargeError:
        mib = self.limit / 2**20
        return PayloadTooLargeError(
            f"the request body is {size}, over this server's limit of {self.limit} bytes ({mib:g} MiB); "
            "send a smaller image, or raise the limit with cvtasks serve --max-message-mb"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            exc = self._error(f"{int(length)} bytes")
            scope[ERROR_KEY] = str(exc)
            return await _send_json(send, 413, error_body(exc), [(b"connection", b"close")])
        seen = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise self._error(f"over {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


class TokenCheck:
    """Every route but the open ones needs ``Authorization: Bearer <token>`` (a user or admin token)."""

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...]) -> None:
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/" or scope["path"].startswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        token = bearer_token([("authorization", header)])
        if token is not None and token_matches(token, self.tokens):
            return await self.app(scope, receive, send)
        message = (
            "this server needs a token: send the header 'Authorization: Bearer <token>'"
            if token is None
            else "the token is not valid for this server"
        )
        scope[ERROR_KEY] = message
        body = {"error": message, "code": "UNAUTHENTICATED"}
        await _send_json(send, 401, body, [(b"www-authenticate", b'Bearer realm="cvtasks"')])


class RequestLog:
    """One log line and one metrics count per request; opens the request's metrics record (the
    pipeline notes the model and stage timings on it, as for an RPC)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics | None, limiter: LogLimiter) -> None:
        self.app, self.metrics, self.limiter = app, metrics, limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        record = begin_rpc(self.metrics)

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "(no route)"
            method = f"{scope['method']} {route}"
            if record is not None:
                record.metrics.observe_rpc(model=record.model, method=method, status=str(status[0]))
            self._log(scope, method, status[0], started, record.model if record else "")

    def _log(self, scope: Scope, method: str, status: int, started: float, model: str) -> None:
        for (what, code), suppressed in self.limiter.expired():
            log.warning("http lines suppressed", extra={"method": what, "status": code, "suppressed": suppressed})
        if status >= 400 and not self.limiter.admit((method, status)):
            return
        client = scope.get("client") or ("", 0)
        extra = {
            "method": method,
            "path": scope["path"],
            "status": status,
            "peer": f"{client[0]}:{client[1]}",
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "model": model,
        }
        if ERROR_KEY in scope:
            extra["error"] = scope[ERROR_KEY]
        log.log(logging.INFO if status < 400 else logging.WARNING, "http", extra=extra)


# --------------------------------------------------------------------------- the app


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    request.scope[ERROR_KEY] = status_message(exc)
    return JSONResponse(error_body(exc), status_code=http_status_for(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route: 404, wrong method: 405) in the same shape."""
    message = {
        400: f"{exc.detail} Send a multipart/form-data upload with the image file in the field `image` "
        "(curl -F image=@photo.jpg), or the image itself as the body",  # the only 400 Starlette raises: a bad form
        404: f"no route {request.url.path}; see /docs for the routes",
        405: f"{request.method} is not allowed on {request.url.path}; see /docs for the routes",
    }.get(exc.status_code, str(exc.detail))
    request.scope[ERROR_KEY] = message
    return JSONResponse(
        {"error": message, "code": "NOT_FOUND" if exc.status_code == 404 else "INVALID_ARGUMENT"},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Our bug: the client learns the type only; the log has the traceback."""
    log.error("http request failed", exc_info=exc, extra={"path": request.url.path})
    message = f"internal error ({type(exc).__name__}); the server log has the details"
    request.scope[ERROR_KEY] = message
    return JSONResponse({"error": message, "code": "INTERNAL"}, status_code=500)


def _docs(app: FastAPI, title: str) -> None:
    """The interactive docs page at /docs: Swagger UI from the swagger-ui-bundle-v2 package, served
    here (FastAPI's default page loads it from a CDN, which an offline server cannot reach)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )


def create_http_app(
    routers: list[Any],
    *,
    security: SecurityConfig,
    max_body_bytes: int,
    metrics: ServingMetrics | None = None,
    title: str = "cvtasks",
    version: str = "",
    cors_origins: tuple[str, ...] = (),
) -> FastAPI:
    """The FastAPI app over ``routers`` (APIRouters), with the shared rules of this module. CORS is
    off unless ``cors_origins`` names the origins (``*``: any) whose pages may call this server."""
    app = FastAPI(title=title, version=version, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    for router in routers:
        app.include_router(router)
    _docs(app, title)
    add_page(app)
    app.add_exception_handler(CvtasksError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    # Added innermost first: the log wraps the token check, which wraps the body limit.
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    tokens = (*security.tokens, *security.admin_tokens)
    if tokens:
        app.add_middleware(TokenCheck, tokens=tokens)
    app.add_middleware(RequestLog, metrics=metrics, limiter=LogLimiter())
    if cors_origins:  # outermost: a preflight is answered before the token check, which it cannot pass
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept", "Inference-Header-Content-Length"],
            expose_headers=["Inference-Header-Content-Length"],
            max_age=600,
        )
    return app


# --------------------------------------------------------------------------- the endpoint


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    # proto IPPROTO_TCP, so that asyncio sets TCP_NODELAY on each accepted connection (it checks the
    # proto): with Nagle on, a response's body waits for the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # one listening socket per worker process; the kernel spreads connections over them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"could not bind the HTTP port {host}:{port} ({exc}); choose another --http-port or 0 for any free port"
        ) from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@dataclass
class HttpEndpoint:
    """uvicorn serving ``app`` on the running event loop (the gRPC server's), its own signal
    handling off: the process's SIGTERM handler (services/server.py) stops both."""

    app: Any
    host: str
    port: int
    security: SecurityConfig
    grace_s: float = 10.0
    reuse_port: bool = False  # a worker of ``serve --workers N``: the port is shared (SO_REUSEPORT)

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (also ``self.port``)."""
        ssl_context = self.security.ssl_context()
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,  # RequestLog writes one line per request
            server_header=False,
            timeout_graceful_shutdown=max(1, round(self.grace_s)),
            ssl_context_factory=(lambda _config, _default: ssl_context) if ssl_context else None,
        )
        config.load()
        self._sock = _bind(self.host, self.port, self.reuse_port)
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)  # what Server.serve would set; lifespan is off
        await self._server.startup(sockets=[self._sock])
        self._loop = asyncio.ensure_future(self._server.main_loop())
        self.tls = ssl_context is not None
        log.info("http port", extra={"port": self.port, "tls": self.tls})
        return self.port

    async def stop(self) -> None:
        """Stop taking connections; requests in flight get up to ``grace_s`` to finish."""
        self._server.should_exit = True
        await self._loop
        await self._server.shutdown(sockets=[self._sock])
