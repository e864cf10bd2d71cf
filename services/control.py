"""The control channel between the supervisor of ``cvtasks serve --workers N`` and one worker: JSON
objects, one per line, over a socketpair the supervisor made (never a network socket).

Either side can ``notify`` (no answer) or ``request`` (awaits the other side's answer). Requests run
concurrently on the receiving side, each in its own task, so a worker waiting for its own request
(a LoadModel it fans out) still answers the supervisor's requests meanwhile. An error raised by a
handler travels back as its class name and message and is raised again on the asking side as the
same cvtasks error class (``RemoteError`` for anything else). When the connection ends, every
request still waiting fails with ConnectionError.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from models import errors as model_errors
from services import errors as service_errors

log = logging.getLogger("cvtasks.control")

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
LIMIT = 16 * 1024 * 1024  # longest line (a model list, a replayed log): far above what is ever sent


class RemoteError(Exception):
    """The other side failed with an error that is not a cvtasks error (a bug there)."""


def _error_classes() -> dict[str, type[Exception]]:
    found: dict[str, type[Exception]] = {}
    for module in (model_errors, service_errors):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, model_errors.CvtasksError):
                found[value.__name__] = value
    return found


ERRORS = _error_classes()


def error_of(kind: str, message: str) -> Exception:
    """The exception ``kind`` (a class name) with ``message``: a cvtasks error class when it is one."""
    cls = ERRORS.get(kind)
    return cls(message) if cls is not None else RemoteError(f"{kind}: {message}")


class Channel:
    """One end of a control connection; ``handler(kind, fields)`` answers what the other end asks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
        self.reader, self.writer, self.handler = reader, writer, handler
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self.closed = False

    @classmethod
    async def over(cls, sock: socket.socket, handler: Handler) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=LIMIT)
        return cls(reader, writer, handler)

    async def _send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise ConnectionError("the control connection is closed")
        self.writer.write(json.dumps(message).encode() + b"\n")
        await self.writer.drain()

    async def notify(self, kind: str, **fields: Any) -> None:
        await self._send({"kind": kind, **fields})

    async def request(self, kind: str, **fields: Any) -> Any:
        """Ask the other end; returns its answer or raises its error (ConnectionError if it goes away)."""
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            await self._send({"kind": kind, "id": ident, **fields})
            return await future
        finally:
            self._waiting.pop(ident, None)

    async def _answer(self, message: dict[str, Any]) -> None:
        ident = message.pop("id")
        kind = message.pop("kind")
        try:
            reply = {"reply": ident, "result": await self.handler(kind, message)}
        except Exception as exc:  # noqa: BLE001 — sent back to the asking side
            if not isinstance(exc, model_errors.CvtasksError):
                log.exception("control request failed", extra={"kind": kind})
            reply = {"reply": ident, "error": {"type": type(exc).__name__, "message": str(exc)}}
        try:
            await self._send(reply)
        except (ConnectionError, OSError):
            pass  # the other end is gone: nobody is waiting for this answer

    def _resolve(self, message: dict[str, Any]) -> None:
        future = self._waiting.get(message["reply"])
        if future is None or future.done():
            return
        if "error" in message:
            future.set_exception(error_of(message["error"]["type"], message["error"]["message"]))
        else:
            future.set_result(message.get("result"))

    async def run(self) -> None:
        """Read messages until the other end closes the connection."""
        try:
            while line := await self.reader.readline():
                message = json.loads(line)
                if "reply" in message:
                    self._resolve(message)
                elif "id" in message:
                    task = asyncio.ensure_future(self._answer(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    kind = message.pop("kind")
                    await self.handler(kind, message)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("the control connection closed"))
            self.writer.close()
