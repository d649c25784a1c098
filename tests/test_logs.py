"""Replica logs and live event streams, end to end: shipped through NATS, read by time,
filtered by replica, followed as they come, and redacted of secret values."""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime

import pytest

from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.e2e


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def test_logs_by_time_and_replica_redacted(stack: Stack, name: str) -> None:
    key = "LOG_" + secrets.token_hex(3).upper()
    value = "logged-" + secrets.token_hex(8)
    with stack.client() as c:
        assert c.post("/v1/secret", json={"key": key, "value": value}).status_code == 201
        try:
            stack.deploy(name, container_secrets=[key])
            assert c.post(f"/e/{name}/say", json={"text": "line one"}).status_code == 200
            assert c.post(f"/e/{name}/say", json={"text": "secret:", "env": key}).status_code == 200

            def lines() -> list[dict[str, str]]:
                got = c.get(f"/v1/logs/{name}", params={"max_lines": 1000})
                assert got.status_code == 200, got.text
                found = [x for x in got.json() if x["data"].startswith(("line one", "secret:"))]
                return found if len(found) == 2 else []

            found = wait_for(lines, 15, "the replica's lines in /v1/logs")
            assert [x["data"] for x in found] == ["line one", "secret: [redacted]"]
            replica = stack.replicas(name)[0]["replica_id"]
            assert {x["replica_id"] for x in found} == {replica}
            assert found[0]["timestamp"].endswith("Z")
            raw = c.get(f"/v1/logs/{name}", params={"max_lines": 1000}).text
            assert value not in raw

            mine = c.get(f"/v1/logs/{name}", params={"replica_id": replica, "max_lines": 1000})
            assert any(x["data"] == "line one" for x in mine.json())
            other = c.get(f"/v1/logs/{name}", params={"replica_id": "ffff0000"})
            assert other.json() == []
            assert len(c.get(f"/v1/logs/{name}", params={"max_lines": 1}).json()) == 1
            later = c.get(f"/v1/logs/{name}", params={"begin_time": "2999-01-01T00:00:00Z"})
            assert later.json() == []
            assert c.get(f"/v1/logs/{name}", params={"replica_id": "a.>"}).status_code == 422
            assert c.get("/v1/logs/no-such-endpoint").status_code == 404
        finally:
            c.delete(f"/v1/endpoint/{name}")
            c.delete(f"/v1/secret/{key}")


def read_until(stack: Stack, path: str, begin: str, trigger, match) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Open a stream from ``begin``, cause something, and return the first line that matches."""
    deadline = time.monotonic() + 20
    with stack.client() as c, c.stream("GET", path, params={"begin_time": begin}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        trigger()
        for line in resp.iter_lines():
            item = json.loads(line)
            if match(item):
                return item  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, "no matching line within 20 s"
    raise AssertionError("the stream ended")


def test_logs_and_events_stream_as_they_happen(stack: Stack, name: str) -> None:
    stack.deploy(name)
    with stack.client() as c:
        assert c.post(f"/e/{name}/say", json={"text": "warm"}).status_code == 200
        begin = now_iso()
        item = read_until(
            stack,
            f"/v1/logs/{name}/stream",
            begin,
            lambda: c.post(f"/e/{name}/say", json={"text": "streamed line"}),
            lambda x: x["data"] == "streamed line",
        )
        assert item["replica_id"]
        event = read_until(
            stack,
            f"/v1/events/{name}/stream",
            now_iso(),
            lambda: c.patch(f"/v1/endpoint/{name}", json={"scale_to_zero": 61}),
            lambda x: x["event"]["type"] == "endpoint_updated",  # type: ignore[index]
        )
        assert event["event"]["details"]["fields"] == ["scale_to_zero"]  # type: ignore[index]
