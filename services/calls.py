"""What the error interceptor (services/server.py) keeps of one RPC: its log line, its status, and
the request bytes that do not parse.

Two rules this module exists for:

- **Nothing touches the grpc context once the RPC has ended.** grpc.aio releases the call as soon as
  the RPC's task finishes; a response stream the client cancelled is only closed later (when its
  generator is finalized), and ``context.peer()`` then reads a freed call and crashes the process
  (SIGSEGV in cygrpc). So the peer and the deadline are read when the RPC starts, the status is
  read while the handler still runs, and the log line and metrics use only what was kept.
- **A request that is not a valid protobuf is the client's error** (INVALID_ARGUMENT), not a server
  failure: guarded deserializers return a ``MalformedRequest`` marker instead of raising, and the
  handler wrapper turns it into an InvalidInputError.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import grpc

from models.errors import InvalidInputError
from services.errors import status_for, status_message
from services.metrics import RpcRecord, ServingMetrics, begin_rpc

log = logging.getLogger("cvtasks.server")

# What a handler sees when its client went away: the RPC's task is cancelled, or (a response stream)
# its generator is closed later, after the RPC has ended.
GONE = (asyncio.CancelledError, GeneratorExit)
# A deadline counts as expired this many seconds early: the core's timer and our clock differ a little.
DEADLINE_SLACK_S = 0.05


# --------------------------------------------------------------------------- rate limit of refusal lines


@dataclass
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0


class LogLimiter:
    """At most ``burst`` log lines per key (e.g. (method, status)) in each window of ``interval_s``
    seconds; the rest are counted. When a window with suppressed lines is over, ``expired()`` hands
    its count back once, for one summary line. ``clock`` returns seconds (time.monotonic)."""

    def __init__(self, *, burst: int = 5, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if burst < 1 or interval_s <= 0:
            raise ValueError(f"burst must be >= 1 and interval_s > 0, got {burst} and {interval_s}")
        self.burst, self.interval_s, self.clock = burst, interval_s, clock
        self._windows: dict[Hashable, _Window] = {}

    def admit(self, key: Hashable) -> bool:
        """Whether this line of ``key`` may be logged (else it is counted as suppressed)."""
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window.started >= self.interval_s:
            window = self._windows[key] = _Window(now)  # an expired window's count went out via expired()
        if window.logged < self.burst:
            window.logged += 1
            return True
        window.suppressed += 1
        return False

    def expired(self) -> list[tuple[Hashable, int]]:
        """(key, suppressed lines) for each window that is over and suppressed some; each is reported once."""
        now = self.clock()
        over = [key for key, w in self._windows.items() if now - w.started >= self.interval_s]
        return [(key, n) for key in over if (n := self._windows.pop(key).suppressed)]


# --------------------------------------------------------------------------- one RPC


@dataclass
class CallLog:
    """One RPC as the interceptor logs and counts it. ``begin`` reads the context (the RPC is live);
    the ``ok`` / ``aborted`` calls read its status while the handler still runs; ``end`` touches no
    context at all."""

    method: str
    peer: str
    started: float  # time.perf_counter()
    deadline: float | None  # time.monotonic() value; None: the client set none
    record: RpcRecord | None
    status: str = "OK"
    error: str = ""
    ended: bool = False  # the client is gone (cancelled, deadline passed): the context must not be used
    done: bool = False  # counted and logged (once)
    exc_info: BaseException | None = field(default=None, repr=False)

    @classmethod
    def begin(cls, method: str, context: grpc.aio.ServicerContext, metrics: ServingMetrics | None) -> CallLog:
        remaining = context.time_remaining()
        return cls(
            method=method,
            peer=context.peer(),
            started=time.perf_counter(),
            deadline=None if remaining is None else time.monotonic() + remaining,
            record=begin_rpc(metrics),
        )

    def ok(self, context: grpc.aio.ServicerContext) -> None:
        """The handler returned; a handler may still have set a code (``context.set_code``)."""
        self.status = _name(context.code()) or "OK"

    def aborted(self, context: grpc.aio.ServicerContext) -> None:
        """The handler called ``context.abort`` (the status is set, the call is still held)."""
        self.status, self.error = _name(context.code()) or "UNKNOWN", context.details() or ""

    def failed(self, exc: Exception) -> None:
        code = status_for(exc)
        self.status = code.name if code is not None else "INTERNAL"
        self.error = status_message(exc) if code is not None else f"{type(exc).__name__}: {exc}"[:200]
        self.exc_info = None if code is not None else exc

    def gone(self) -> None:
        """The client cancelled or its deadline passed (CancelledError, or the response stream was abandoned)."""
        if self.done:
            return
        self.ended = True
        expired = self.deadline is not None and time.monotonic() >= self.deadline - DEADLINE_SLACK_S
        self.status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"

    def end(self, limiter: LogLimiter) -> None:
        """Count the RPC and log its line (a refusal's line may be rate-limited, never its count); once."""
        if self.done:
            return
        self.done = True
        if self.record is not None:
            self.record.metrics.observe_rpc(model=self.record.model, method=self.method, status=self.status)
        for (method, status), suppressed in limiter.expired():
            log.warning(
                "rpc lines suppressed",
                extra={"method": method, "status": status, "suppressed": suppressed, "interval_s": limiter.interval_s},
            )
        if self.status != "OK" and not limiter.admit((self.method, self.status)):
            return
        extra: dict[str, Any] = {
            "method": self.method,
            "status": self.status,
            "peer": self.peer,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 2),
        }
        if self.record is not None:
            extra["model"] = self.record.model
        if self.error:
            extra["error"] = self.error
        exc = self.exc_info
        log.log(
            logging.INFO if self.status == "OK" else logging.WARNING,
            "rpc",
            extra=extra,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        )


def _name(code: grpc.StatusCode | None) -> str | None:
    return getattr(code, "name", None)


# --------------------------------------------------------------------------- request bytes that do not parse


@dataclass(frozen=True)
class MalformedRequest:
    """What a guarded deserializer returns for bytes that are not the request message."""

    message_type: str
    reason: str

    def error(self) -> InvalidInputError:
        return InvalidInputError(f"the request is not a valid {self.message_type} protobuf: {self.reason}")


def guarded_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` (a message class's FromString), returning a MalformedRequest instead of raising."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", None) or getattr(owner, "__name__", "request")

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 — any parse failure is the client's (DecodeError, RuntimeWarning...)
            return MalformedRequest(message_type, str(exc) or type(exc).__name__)

    return parse


def checked_request(request: Any) -> Any:
    """``request`` itself, or its InvalidInputError when it did not parse."""
    if isinstance(request, MalformedRequest):
        raise request.error()
    return request


async def checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that raises InvalidInputError at the first message that did not parse."""
    async for request in requests:
        yield checked_request(request)
