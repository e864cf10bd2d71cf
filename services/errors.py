"""Serving errors and the one table that maps every domain error to a gRPC status, and that
status to an HTTP one.

Servicers and routes raise (or let through) these exceptions and carry no try/except of their
own; the interceptor in services/server.py turns them into gRPC statuses with `status_for`, the
HTTP app (services/http.py) into HTTP statuses with `http_status_for`.
"""

from __future__ import annotations

import grpc

from models.errors import (
    CvtasksError,
    DatasetError,
    DecodeError,
    ImageTooLargeError,
    InvalidInputError,
    ModelStoreError,
    UnknownModelError,
)

__all__ = [
    "CvtasksError",
    "DecodeError",
    "DeadlineExceededError",
    "ImageTooLargeError",
    "InvalidInputError",
    "ModelStoreError",
    "QueueFullError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownModelError",
    "http_status_for",
    "status_for",
    "status_message",
]

MAX_STATUS_MESSAGE = 1024  # characters; grpc's response metadata (where the message travels) holds a few KiB


class QueueFullError(CvtasksError):
    """The model's request queue is at its bound; retry later or slow down. RESOURCE_EXHAUSTED."""


class DeadlineExceededError(CvtasksError):
    """The request's deadline passed before the model could run it. DEADLINE_EXCEEDED."""


class UnavailableError(CvtasksError):
    """The server or model is not ready (loading, shutting down). UNAVAILABLE."""


class UnimplementedError(CvtasksError):
    """An RPC of a public service this server does not offer; the message says what to use. UNIMPLEMENTED."""


class PayloadTooLargeError(InvalidInputError):
    """An HTTP request body over the server's limit (--max-message-mb). INVALID_ARGUMENT; 413 over HTTP."""


class UnsupportedMediaTypeError(InvalidInputError):
    """An HTTP request body of a content type the route does not take. INVALID_ARGUMENT; 415 over HTTP."""


# Most specific classes first: the first isinstance match wins.
_STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (DatasetError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelStoreError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnknownModelError, grpc.StatusCode.NOT_FOUND),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (UnimplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),  # a generated servicer's default for an RPC not overridden
)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status for a domain error, or None for an unexpected exception (-> INTERNAL)."""
    for cls, code in _STATUS_TABLE:
        if isinstance(exc, cls):
            return code
    return None


def status_message(exc: BaseException) -> str:
    """The status message a client gets for a domain error: its text, cut to MAX_STATUS_MESSAGE characters
    (the one cap on what goes back; quoting client input is also cut where it is quoted: models.errors.shown)."""
    text = str(exc)
    if len(text) <= MAX_STATUS_MESSAGE:
        return text
    return f"{text[:MAX_STATUS_MESSAGE]}... (message cut at {MAX_STATUS_MESSAGE} of {len(text)} characters)"


# gRPC status -> HTTP status (the usual mapping, as grpc-gateway and Google's APIs use it).
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Refinements of INVALID_ARGUMENT that HTTP has a status of its own for.
_HTTP_SPECIFIC: tuple[tuple[type[BaseException], int], ...] = (
    (PayloadTooLargeError, 413),
    (ImageTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
)


def http_status_for(exc: BaseException) -> int:
    """The HTTP status for a domain error (500 for an unexpected exception)."""
    for cls, status in _HTTP_SPECIFIC:
        if isinstance(exc, cls):
            return status
    code = status_for(exc)
    return 500 if code is None else _HTTP_STATUS.get(code, 500)
