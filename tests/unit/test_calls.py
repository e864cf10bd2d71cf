"""services/calls.py and the helpers around it: the refusal-line rate limit (a fake clock), the status of
a call the client gave up on, guarded deserializers, client strings quoted short, the status-message
cap, and which hosts keep model management open."""

from __future__ import annotations

import logging
import time

import grpc
import pytest

from models.errors import QUOTE_CHARS, InvalidInputError, UnknownModelError, shown
from services.calls import CallLog, LogLimiter, MalformedRequest, checked_request, guarded_deserializer
from services.errors import MAX_STATUS_MESSAGE, status_for, status_message
from services.pb import detection_pb2
from services.security import SecurityConfig, is_loopback


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_logs_a_burst_per_key_and_window_then_reports_the_rest_once():
    clock = Clock()
    limiter = LogLimiter(burst=3, interval_s=10.0, clock=clock)
    key, other = ("/m/Detect", "INVALID_ARGUMENT"), ("/m/Detect", "NOT_FOUND")
    assert [limiter.admit(key) for _ in range(10)] == [True] * 3 + [False] * 7
    assert limiter.admit(other)  # each (method, status) has its own budget
    clock.now += 9.9
    assert limiter.expired() == [] and not limiter.admit(key)  # the window is not over yet
    clock.now += 0.2
    assert limiter.expired() == [(key, 8)]  # one summary: 7 + 1 suppressed; `other` suppressed none
    assert limiter.expired() == []  # reported once
    assert [limiter.admit(key) for _ in range(4)] == [True, True, True, False]  # a new window
    with pytest.raises(ValueError, match="burst"):
        LogLimiter(burst=0)


def test_the_rpc_log_rate_limits_refusals_but_not_their_counts_nor_ok_lines(caplog):
    clock = Clock()
    limiter = LogLimiter(burst=2, interval_s=5.0, clock=clock)

    def finish(status: str) -> None:
        call = CallLog(
            method="/m/Detect",
            peer="ipv4:1.2.3.4:5",
            started=time.perf_counter(),
            deadline=None,
            record=None,
            status=status,
        )
        call.end(limiter)
        call.end(limiter)  # once only

    with caplog.at_level(logging.INFO, logger="cvtasks.server"):
        for _ in range(50):
            finish("INVALID_ARGUMENT")
        for _ in range(5):
            finish("OK")
        clock.now += 6
        finish("OK")
    lines = [(r.getMessage(), r.status, getattr(r, "suppressed", None)) for r in caplog.records]
    assert lines == (
        [("rpc", "INVALID_ARGUMENT", None)] * 2
        + [("rpc", "OK", None)] * 5
        + [("rpc lines suppressed", "INVALID_ARGUMENT", 48), ("rpc", "OK", None)]
    )


def _call(deadline: float | None) -> CallLog:
    return CallLog(method="/m/S", peer="p", started=time.perf_counter(), deadline=deadline, record=None)


def test_a_call_the_client_gave_up_on_is_cancelled_or_deadline_exceeded_without_asking_the_context():
    before = _call(time.monotonic() + 60)
    before.gone()
    assert (before.status, before.ended) == ("CANCELLED", True)
    late = _call(time.monotonic() - 0.01)
    late.gone()
    assert late.status == "DEADLINE_EXCEEDED"
    none = _call(None)
    none.gone()
    assert none.status == "CANCELLED"


def test_failures_are_named_by_the_status_table():
    call = _call(None)
    call.failed(InvalidInputError("bad"))
    assert (call.status, call.error, call.exc_info) == ("INVALID_ARGUMENT", "bad", None)
    bug = ZeroDivisionError("x")
    call.failed(bug)
    assert call.status == "INTERNAL" and call.exc_info is bug
    assert status_for(NotImplementedError()) == grpc.StatusCode.UNIMPLEMENTED


def test_a_guarded_deserializer_returns_a_marker_that_becomes_invalid_argument():
    parse = guarded_deserializer(detection_pb2.DetectRequest.FromString)
    good = detection_pb2.DetectRequest(request_id="a")
    assert parse(good.SerializeToString()) == good
    bad = parse(b"\xff\xff garbage")
    assert isinstance(bad, MalformedRequest) and bad.message_type == "cvtasks.v1.DetectRequest"
    with pytest.raises(InvalidInputError, match="the request is not a valid cvtasks.v1.DetectRequest protobuf: "):
        checked_request(bad)
    assert checked_request(good) is good and guarded_deserializer(None) is None


def test_client_strings_are_quoted_short():
    assert shown("tiny-detector") == "tiny-detector"
    long = shown("x" * (1 << 20))
    assert long.startswith("x" * QUOTE_CHARS + "...") and "(1048576 characters)" in long and len(long) < 100
    many = shown([f"class-{i}" for i in range(100)])
    assert many.startswith("['class-0', 'class-1'") and many.endswith(", ... 92 more]") and len(many) < 200
    assert shown(["a", "b"]) == "['a', 'b']"


def test_status_messages_are_capped_in_one_place():
    assert status_message(UnknownModelError("Unknown model `x`")) == "Unknown model `x`"
    capped = status_message(InvalidInputError("y" * 100_000))
    assert len(capped) < MAX_STATUS_MESSAGE + 100 and "cut at 1024 of 100000 characters" in capped


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_model_management_is_open_only_on_loopback_with_admin_tokens_or_when_asked(host, loopback):
    assert is_loopback(host) is loopback
    refusal = SecurityConfig().management_refusal(host)
    assert (refusal is None) is loopback
    if refusal:
        assert "--host 127.0.0.1" in refusal and "--admin-tokens-file" in refusal and "--open-management" in refusal
    assert SecurityConfig(open_management=True).management_refusal(host) is None
    with_tokens = SecurityConfig(tokens=("user-token-0123456789abcdef",), admin_tokens=("admin-token-0123456789ab",))
    assert with_tokens.management_refusal(host) is None  # the tokens decide (AuthInterceptor)
