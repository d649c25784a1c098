"""Async inference, OctoAI's way, end to end: X-OctoAI-Async → 202 {response_id, poll_url},
poll until completed, fetch the stored response; durable across an API restart; FIFO."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest

from tests.conftest import FAST, NatsServer, Stack, wait_for

pytestmark = pytest.mark.e2e

ASYNC = {"X-OctoAI-Async": "1"}


def submit(c: httpx.Client, name: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = c.post(f"/e/{name}/infer", json=body, headers=ASYNC)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert set(job) == {"response_id", "poll_url"}
    assert resp.headers["location"] == job["poll_url"]
    return job  # type: ignore[no-any-return]


def poll(
    c: httpx.Client, job: dict[str, Any], until: str = "completed", timeout: float = 30
) -> dict[str, Any]:
    def state() -> dict[str, Any] | None:
        got = c.get(job["poll_url"])
        assert got.status_code == 200, got.text
        return got.json() if got.json()["status"] == until else None  # type: ignore[no-any-return]

    return wait_for(state, timeout, f"request {job['response_id']} to be {until}")


def test_async_request_polls_to_the_stored_response(stack: Stack, name: str) -> None:
    stack.deploy(name)
    with stack.client() as c:
        job = submit(c, name, {"prompt": "later", "sleep": 1.0})
        assert job["poll_url"] == f"{stack.url}/v1/requests/{job['response_id']}"
        running = poll(c, job, "running")
        assert running["started_at"] and running["replica_id"] and "response_url" not in running
        not_yet = c.get(f"/v1/responses/{job['response_id']}")
        assert not_yet.status_code == 404 and not_yet.json()["error"]["code"] == "not_ready"
        done = poll(c, job)
        assert done["response_url"] == f"{stack.url}/v1/responses/{job['response_id']}"
        resp = c.get(done["response_url"])
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        assert resp.json()["output"]["prompt"] == "later"
        # An empty header means sync, as OctoAI's TypeScript client sends it.
        sync = c.post(f"/e/{name}/infer", json={"prompt": "now"}, headers={"X-OctoAI-Async": ""})
        assert sync.status_code == 200 and sync.json()["output"]["prompt"] == "now"


def test_async_failures_and_access(stack: Stack, name: str) -> None:
    broken = name[:-5] + "-brk"
    stack.deploy(name)
    stack.deploy(broken, "broken")
    try:
        with stack.client() as c:
            job = submit(c, broken, {"prompt": "x"})
            failed = poll(c, job, "failed")
            assert "replica_failed" in failed["reason"]
            resp = c.get(failed["response_url"])
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "replica_failed"

            ok = submit(c, name, {"prompt": "mine"})
            poll(c, ok)
            other = c.post(
                "/v1/tokens", json={"name": "t", "scopes": ["inference"], "endpoints": [broken]}
            )
            token = other.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=stack.url, timeout=30) as anon:
            assert anon.get(ok["poll_url"]).status_code == 401
            assert anon.get("/v1/requests/no-such-id").status_code == 401
            assert anon.get(ok["poll_url"], headers=headers).status_code == 404
            assert anon.get("/v1/requests/no-such-id", headers=headers).status_code == 404
            assert anon.get("/v1/requests/bad%20id", headers=headers).status_code == 404
    finally:
        with stack.client() as c:
            c.delete(f"/v1/endpoint/{broken}")


def test_many_async_requests_complete_in_order(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    order = shared_tmp / "order.log"
    stack.deploy(name, max_replicas=1)
    with stack.client() as c:
        jobs = [submit(c, name, {"prompt": f"j{i}", "log": str(order)}) for i in range(25)]
        for job in jobs:
            poll(c, job, timeout=60)
        outputs = [
            c.get(f"/v1/responses/{j['response_id']}").json()["output"]["prompt"] for j in jobs
        ]
    assert outputs == [f"j{i}" for i in range(25)]
    assert order.read_text().split() == [f"j{i}" for i in range(25)]  # FIFO, none lost


async def job_status(url: str, response_id: str) -> str | None:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value("berth_jobs")
        entry = await kv.get(response_id)
        return str(orjson.loads(entry.value)["status"]) if entry.value else None
    finally:
        await nc.close()


def test_async_job_completes_while_the_api_is_down(own_nats: NatsServer, tmp_path: Path) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env=FAST)
    try:
        stack.start()
        stack.deploy("durable", min_replicas=1)
        with stack.client() as c:
            wait_for(lambda: stack.replicas("durable"), 30, "a replica")
            job = submit(c, "durable", {"prompt": "survives", "sleep": 1.0})
        stack.stop("api")
        # The job finishes while no API runs: its state says so in NATS.
        wait_for(
            lambda: asyncio.run(job_status(own_nats.url, job["response_id"])) == "completed",
            30,
            "the job to complete with the API down",
            interval=0.2,
        )
        stack.start("api")
        with stack.client() as c:
            done = poll(c, job)
            assert c.get(done["response_url"]).json()["output"]["prompt"] == "survives"
    finally:
        stack.close()


async def job_seqs(url: str, ids: list[str]) -> dict[str, int]:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value("berth_jobs")
        return {i: int(orjson.loads((await kv.get(i)).value or b"{}")["seq"]) for i in ids}
    finally:
        await nc.close()


def test_concurrent_async_submissions_run_in_queue_order(
    stack: Stack, name: str, nats_server: NatsServer, tmp_path: Path, shared_tmp: Path
) -> None:
    order = shared_tmp / "order.log"
    stack.deploy(name, max_replicas=1)

    async def submit_all() -> list[dict[str, Any]]:
        async with stack.aclient() as c:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> dict[str, Any]:
                async with sem:
                    body = {"prompt": f"c{i}", "log": str(order)}
                    resp = await c.post(f"/e/{name}/infer", json=body, headers=ASYNC)
                    assert resp.status_code == 202, resp.text
                    return resp.json()  # type: ignore[no-any-return]

            return list(await asyncio.gather(*(one(i) for i in range(60))))

    jobs = asyncio.run(submit_all())
    with stack.client() as c:
        for job in jobs:
            poll(c, job, timeout=60)
    ids = [j["response_id"] for j in jobs]
    seqs = asyncio.run(job_seqs(nats_server.url, ids))
    prompts = {j["response_id"]: f"c{i}" for i, j in enumerate(jobs)}
    # Every job ran once, in the order the queue accepted them.
    assert order.read_text().split() == [prompts[i] for i in sorted(ids, key=seqs.__getitem__)]
