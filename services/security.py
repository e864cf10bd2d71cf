"""TLS and bearer-token authentication for the server.

Secrets never come from the command line (it lands in shell history and ``ps``): tokens are
read from files (one per line, ``#`` comments) or from environment variables (comma-separated);
certificate and key files are given by path.

Every RPC needs ``authorization: Bearer <token>`` metadata when tokens are configured, except
the health service (load balancers and Docker's health check probe it without secrets).
Admin RPCs (ModelService.LoadModel / UnloadModel) need an admin token. No or an unknown token:
UNAUTHENTICATED; a valid user token on an admin RPC: PERMISSION_DENIED.

Without tokens, the admin RPCs are closed (PERMISSION_DENIED, saying how to open them) unless the
server listens on loopback only or ``open_management`` says the network is trusted: anyone who
reaches an open port could otherwise load and unload models.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

TOKENS_ENV = "CVTASKS_TOKENS"
ADMIN_TOKENS_ENV = "CVTASKS_ADMIN_TOKENS"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
ADMIN_METHODS = frozenset({"/cvtasks.v1.ModelService/LoadModel", "/cvtasks.v1.ModelService/UnloadModel"})


def read_tokens(path: str | os.PathLike[str] | None = None, *, env: str | None = None) -> tuple[str, ...]:
    """Tokens from a file (one per line; blank lines and ``#`` comments skipped) and/or from the
    comma-separated environment variable ``env``."""
    tokens: list[str] = []
    if path:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"no such token file: {file}")
        tokens += [
            line.strip() for line in file.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    if env and os.environ.get(env):
        tokens += [t.strip() for t in os.environ[env].split(",") if t.strip()]
    return tuple(tokens)


@dataclass(frozen=True)
class SecurityConfig:
    """TLS files (a client CA turns on mutual TLS) and the accepted tokens (none: no auth)."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tokens: tuple[str, ...] = field(default=(), repr=False)
    admin_tokens: tuple[str, ...] = field(default=(), repr=False)
    open_management: bool = False  # LoadModel/UnloadModel without admin tokens on every interface (trusted networks)

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("mutual TLS (--tls-client-ca) needs the server's own --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"no such TLS file: {path}")
        if self.admin_tokens and not self.tokens:
            raise ValueError(
                f"admin tokens need user tokens too (admins are users): set the tokens file or {TOKENS_ENV}"
            )
        if any(len(t) < 16 for t in (*self.tokens, *self.admin_tokens)):
            raise ValueError("tokens must be at least 16 characters long")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    def management_refusal(self, host: str) -> str | None:
        """Why LoadModel/UnloadModel are closed on a server listening on ``host`` without tokens, or None
        when they are open (loopback only, or ``open_management``). With tokens, admin tokens decide."""
        if self.auth_enabled or self.open_management or is_loopback(host):
            return None
        return (
            f"model management is closed: this server listens on {host or 'every interface'} without admin "
            "tokens, so anyone who reaches the port could load and unload models. Open it with admin tokens "
            f"(--admin-tokens-file or {ADMIN_TOKENS_ENV}, with user tokens), by listening on loopback only "
            "(--host 127.0.0.1), or on a trusted network with --open-management"
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS (mutual TLS: client certificates from tls_client_ca) for an HTTP endpoint, or None."""
        if not self.tls_cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca:
            context.load_verify_locations(self.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def credentials(self) -> grpc.ServerCredentials | None:
        """Server credentials for ``add_secure_port``, or None for a plaintext port."""
        if not self.tls_cert:
            return None
        pair = [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())]
        if self.tls_client_ca:
            return grpc.ssl_server_credentials(
                pair, root_certificates=Path(self.tls_client_ca).read_bytes(), require_client_auth=True
            )
        return grpc.ssl_server_credentials(pair)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a --host value) reaches this machine only: localhost, 127.0.0.0/8, ::1."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # "" (every interface), or a host name other than localhost: it may be anything
        return False


def token_matches(token: str, accepted: Iterable[str]) -> bool:
    """Whether ``token`` is one of ``accepted``, compared in constant time."""
    return any(hmac.compare_digest(token.encode(), candidate.encode()) for candidate in accepted)


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _refuse(code: grpc.StatusCode, message: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    abort.ignores_request = True  # refused whatever it asked: even bytes that do not parse (services/server.py)

    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **codec)
    return grpc.unary_unary_rpc_method_handler(abort, **codec)


class ManagementGuard(grpc.aio.ServerInterceptor):
    """Refuses the admin RPCs with ``refusal`` (SecurityConfig.management_refusal) on a server without tokens."""

    def __init__(self, refusal: str) -> None:
        self.refusal = refusal

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method not in ADMIN_METHODS:
            return handler
        return _refuse(
            grpc.StatusCode.PERMISSION_DENIED, f"{details.method.rsplit('/', 1)[-1]}: {self.refusal}", handler
        )


def server_interceptors(config: SecurityConfig, host: str) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors that enforce ``config`` on a server listening on ``host`` (none when all is open)."""
    if config.auth_enabled:
        return [AuthInterceptor(config)]
    refusal = config.management_refusal(host)
    return [ManagementGuard(refusal)] if refusal else []


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token of every call but health's; admin methods need an admin token."""

    def __init__(self, config: SecurityConfig) -> None:
        self.tokens = (*config.tokens, *config.admin_tokens)
        self.admin_tokens = config.admin_tokens

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        token = bearer_token(details.invocation_metadata)
        if token is None:
            return _refuse(
                grpc.StatusCode.UNAUTHENTICATED,
                "this server needs a token: send metadata 'authorization: Bearer <token>'",
                handler,
            )
        if not token_matches(token, self.tokens):
            return _refuse(grpc.StatusCode.UNAUTHENTICATED, "the token is not valid for this server", handler)
        if method in ADMIN_METHODS and not token_matches(token, self.admin_tokens):
            where = (
                "" if self.admin_tokens else (f"; this server has none: set --admin-tokens-file or {ADMIN_TOKENS_ENV}")
            )
            return _refuse(
                grpc.StatusCode.PERMISSION_DENIED, f"{method.rsplit('/', 1)[-1]} needs an admin token{where}", handler
            )
        return handler
