"""The request/reply envelopes survive a round trip through NATS headers."""

from __future__ import annotations

import time

from broker.envelope import H, Reply, RequestEnvelope
from workers.runtimes.base import failure_reason


def test_request_round_trip() -> None:
    env = RequestEnvelope(
        request_id="r1",
        method="PUT",
        path="/v1/x",
        query="a=1&b=%20",
        headers=[("content-type", "application/json"), ("x-multi", "1"), ("x-multi", "2")],
        deadline=time.time() + 5,
        reply_to="_INBOX.berth.abc.r1",
        traceparent="00-abc-def-01",
    )
    headers = env.to_headers()
    assert headers[H.MSG_ID] == "r1"  # JetStream de-duplicates on the request id
    assert all(isinstance(v, str) and "\n" not in v for v in headers.values())
    assert RequestEnvelope.from_headers(headers) == env
    assert not env.expired()
    assert RequestEnvelope(request_id="x", method="GET", path="/", deadline=1.0).expired()
    assert not RequestEnvelope(request_id="x", method="GET", path="/").expired()


def test_reply_round_trip_and_failure() -> None:
    reply = Reply(
        status=201,
        body=b"\x00raw",
        headers=[("set-cookie", "a"), ("set-cookie", "b")],
        replica_id="r",
    )
    back = Reply.from_message(reply.to_headers(), reply.body)
    assert back == reply
    failed = Reply.failure(503, "replica_failed", "boom")
    assert failed.error == "replica_failed" and b'"boom"' in failed.body
    assert Reply.from_message(failed.to_headers(), failed.body).error == "replica_failed"


def test_failure_reason_prefers_berth_line() -> None:
    log = "Traceback...\nRuntimeError: x\nberth: setup() failed: RuntimeError: x\n"
    assert failure_reason(3, log) == "setup() failed: RuntimeError: x"
    assert failure_reason(1, "something\nlast words\n") == "replica exited with code 1: last words"
    assert failure_reason(-9, "") == "replica killed by signal 9"
