"""Bodies larger than a NATS message: claim checks through the JetStream object store.

The NATS server here allows 256 KiB messages, so a 1 MiB request and a 2 MiB answer
must take the object store, sync and async; what a sync exchange put there is removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from berth.local import LocalNats
from tests.conftest import FAST, Stack, wait_for
from tests.test_async import ASYNC, poll

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[LocalNats]:
    server = LocalNats(tmp_path / "nats", max_payload=256 * 1024)
    server.start()
    yield server
    server.stop()


async def objects_left(url: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        store = await nc.jetstream().object_store("berth_bodies")
        try:
            return [info.name for info in await store.list(ignore_deletes=True)]
        except Exception:  # nats-py raises when the bucket is empty
            return []
    finally:
        await nc.close()


def test_large_bodies_take_the_object_store(small_nats: LocalNats, tmp_path: Path) -> None:
    env = {**FAST, "BERTH_MAX_BODY_BYTES": str(3 * MiB), "BERTH_MAX_RESPONSE_BYTES": str(5 * MiB)}
    stack = Stack(tmp_path / "berth", small_nats.url, env=env)
    try:
        stack.start()
        stack.deploy("big", "echo")
        big = "x" * MiB
        with stack.client() as c:
            resp = c.post("/e/big/infer", json={"prompt": big, "n": 2})
            assert resp.status_code == 200 and resp.json()["output"]["text"] == big * 2
            # Read once, then dropped (the request's by the agent once it has answered).
            wait_for(lambda: asyncio.run(objects_left(small_nats.url)) == [], 10, "no objects")

            job = c.post("/e/big/infer", json={"prompt": big, "n": 2}, headers=ASYNC).json()
            done = poll(c, job)
            for _ in range(2):  # a job's result is kept: it may be fetched again
                got = c.get(done["response_url"])
                assert got.status_code == 200 and got.json()["output"]["text"] == big * 2
            wait_for(
                lambda: asyncio.run(objects_left(small_nats.url)) == [f"res-{job['response_id']}"],
                10,
                "only the job's result to be left",
            )

            too_big = c.post("/e/big/infer", content=b"x" * (3 * MiB + 1))
            assert too_big.status_code == 413
            assert too_big.json()["error"]["code"] == "body_too_large"
            huge = c.post("/e/big/infer", json={"prompt": big, "n": 6})
            assert huge.status_code == 502
            assert huge.json()["error"]["code"] == "response_too_large"
    finally:
        stack.close()
