"""A replica that cannot start never turns into a hot loop: every way a start fails goes
through the scaler's exponential back-off; after a few failures in a row the endpoint is
marked failing with the reason; callers and queued jobs are told at once."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest

from broker.connection import connect
from shared import names
from tests.conftest import Stack, wait_for
from tests.test_archives import HOSTILE, archive

pytestmark = pytest.mark.e2e


def _store_behind_the_apis_back(stack: Stack, data: bytes) -> str:
    """An archive stored before upload checks existed (or by anything but the API)."""

    async def put() -> str:
        broker = await connect(stack.env["BERTH_NATS_URL"], "test-store")
        try:
            model_id = "sha256:" + hashlib.sha256(data).hexdigest()
            store = await broker.js.object_store(names.OBJ_MODELS)
            await store.put(model_id.replace(":", "-"), data)
            return model_id
        finally:
            await broker.close()

    return asyncio.run(put())


def test_a_model_the_agent_refuses_backs_off_and_is_marked_failing(stack: Stack, name: str) -> None:
    model_id = _store_behind_the_apis_back(stack, archive(HOSTILE["symlink"]))
    with stack.client() as c:
        made = c.post("/v1/endpoint", json={"name": name, "model_id": model_id})
        assert made.status_code == 201, made.text
        job = c.post(f"/e/{name}/infer", json={"prompt": "x"}, headers={"X-OctoAI-Async": "1"})
        assert job.status_code == 202
        started = time.monotonic()
        resp = c.post(f"/e/{name}/infer", json={"prompt": "x"})
        assert resp.status_code == 503, resp.text
        assert time.monotonic() - started < 15
        assert "link" in resp.json()["error"]["message"]
        state = c.get(job.json()["poll_url"]).json()
        assert state["status"] == "failed" and "link" in state["reason"], state

        def failing() -> dict[str, Any] | None:
            # Callers keep coming: each is answered at once, and none speeds up the retries.
            c.post(f"/e/{name}/infer", json={"prompt": "again"})
            return c.get(f"/v1/endpoint/{name}").json().get("failing")

        mark = wait_for(failing, 60, "the endpoint to be marked failing")
        assert "link" in mark["reason"] and mark["failures"] >= 4
        assert mark["retry_at"] > mark["since"]
        elapsed = time.monotonic() - started
        events = [
            e["event"] for e in c.get(f"/v1/events/{name}", params={"max_lines": 1000}).json()
        ]
        types = [e["type"] for e in events]
        assert types.count("endpoint_failing") == 1
        starts = types.count("replica_start_failed")
        # Back-off 1, 2, 4, 8 … s (BERTH_START_BACKOFF=1): a handful of starts, not thousands.
        assert 4 <= starts <= 2 + elapsed / 1.0, (starts, elapsed)
        waits = [e["details"]["retry_in_s"] for e in events if e["type"] == "start_backoff"]
        assert waits[:3] == sorted(waits[:3]) and waits[2] >= 2 * waits[0], waits
        # A fixed config is a new chance: the mark goes and the endpoint serves.
        fixed = c.post("/v1/models", content=archive())
        assert fixed.status_code == 201, fixed.text
        patched = c.patch(f"/v1/endpoint/{name}", json={"model_id": fixed.json()["model_id"]})
        assert patched.status_code == 200, patched.text
        assert c.post(f"/e/{name}/infer", json={}).status_code == 200
        wait_for(
            lambda: c.get(f"/v1/endpoint/{name}").json().get("failing") is None,
            30,
            "the failing mark to clear",
        )
