"""Streaming end to end: Accept: text/event-stream relays a replica's chunks as they come,
through NATS, the way OctoAI's infer_stream reads them; a caller that hangs up stops it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.e2e

SSE = {"Accept": "text/event-stream"}


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_chunks_arrive_as_the_replica_yields_them(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    log = shared_tmp / "sent.log"
    stack.deploy(name)
    body = {"prompt": "s", "n": 3, "delay": 1.0, "log": str(log)}
    events: list[Any] = []
    with stack.client() as c, c.stream("POST", f"/e/{name}/chunks", json=body, headers=SSE) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in resp.headers
        for line in resp.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                events.append(data)
                break
            events.append(json.loads(data))
            if len(events) == 1:
                # The first chunk is here while the model still sleeps before the second.
                assert lines(log) == ["s-0"]
    assert events == [{"i": i, "text": f"s {i}"} for i in range(3)] + ["[DONE]"]


def test_a_generator_without_sse_answers_all_chunks_at_once(stack: Stack, name: str) -> None:
    stack.deploy(name)
    with stack.client() as c:
        resp = c.post(f"/e/{name}/chunks", json={"prompt": "w", "n": 2})
        assert resp.status_code == 200
        assert resp.json()["output"] == [{"i": 0, "text": "w 0"}, {"i": 1, "text": "w 1"}]
        # A route that does not stream answers whole, even to an SSE caller.
        whole = c.post(f"/e/{name}/infer", json={"prompt": "p"}, headers=SSE)
        assert whole.status_code == 200 and whole.json()["output"]["prompt"] == "p"
        bad = c.post(f"/e/{name}/chunks", json={"n": "many"}, headers=SSE)
        assert bad.status_code == 422


def test_a_caller_that_hangs_up_stops_the_stream(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    log = shared_tmp / "sent.log"
    stack.deploy(name, max_replicas=1)
    body = {"prompt": "h", "n": 100, "delay": 0.1, "log": str(log)}
    with stack.client() as c:
        with c.stream("POST", f"/e/{name}/chunks", json=body, headers=SSE) as resp:
            got = 0
            for line in resp.iter_lines():
                got += line.startswith("data: ")
                if got == 2:
                    break  # leaving the block closes the connection
        # The replica is free again long before 100 chunks (10 s) could have been sent.
        after = c.post(f"/e/{name}/infer", json={"prompt": "next"}, timeout=8)
        assert after.status_code == 200
    # It held the replica while it ran: the next request's answer means it had stopped.
    assert 2 <= len(lines(log)) < 60
