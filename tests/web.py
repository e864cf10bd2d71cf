"""A small HTTP client for the tests of the HTTP/REST routes (the standard library's urllib, so the
tests see the raw statuses, headers and bodies a client gets)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json()["error"]


def call(
    url: str,
    *,
    method: str = "GET",
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, Any] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 120,
) -> Reply:
    """One request; any status comes back as a Reply (none raises)."""
    if query:
        url += "?" + urlencode(query, doseq=True)
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, dict(err.headers), err.read())


def multipart(fields: Mapping[str, str], files: Mapping[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type: ``files`` name -> (filename, bytes, type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, kind) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {kind}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def without_timings(doc: dict) -> dict:
    """A typed response's JSON without its server-side timings (they differ call to call)."""
    return {k: v for k, v in doc.items() if k != "timings"}


def send_until_answered(
    url: str,
    headers: Mapping[str, str],
    chunks: Iterable[bytes],
    *,
    chunked: bool = False,
    context: ssl.SSLContext | None = None,
    timeout: float = 60,
) -> tuple[Reply, int]:
    """POST ``chunks`` as the body the way a streaming client does, stopping as soon as the server
    answers; returns the reply and how many body bytes were sent before it came. With ``Expect:
    100-continue`` in ``headers``, no body byte goes out until the server asks for it."""
    import select
    import socket
    from http.client import HTTPResponse
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname=parts.hostname)
    head = [f"POST {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1", f"Host: {parts.netloc}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        head.append("Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sent, waiting = 0, any(k.lower() == "expect" for k in headers)
    try:
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 5 if waiting else 0)
            if readable:
                reply = _read_reply(sock, HTTPResponse)
                if reply.status != 100:
                    return reply, sent
                waiting = False
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
            except (BrokenPipeError, ConnectionResetError):  # it answered and closed: read what it said
                return _read_reply(sock, HTTPResponse), sent
            sent += len(chunk)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return _read_reply(sock, HTTPResponse), sent
    finally:
        sock.close()


def _read_reply(sock: Any, response_type: type) -> Reply:
    response = response_type(sock)
    response.begin()
    if response.status == 100:
        return Reply(100, {}, b"")
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
