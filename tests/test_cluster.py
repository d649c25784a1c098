"""Berth on a three-node JetStream cluster with its streams, buckets and object stores
replicated three ways (BERTH_NATS_REPLICAS=3): under steady sync and async load, the
node leading the requests stream is killed and brought back; no accepted job is lost,
and every caller is answered or told why."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.connection import connect
from shared import names
from tests.cluster import Cluster, js_ready
from tests.conftest import FAST, Stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def _leader(url: str, stream: str) -> str:
    b = await connect(url, "test-probe", timeout=5)
    try:
        info = await b.js.stream_info(stream)
        assert info.config.num_replicas == 3, info.config
        assert info.cluster is not None and info.cluster.leader
        return str(info.cluster.leader)
    finally:
        await b.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        wait_for(lambda: asyncio.run(js_ready(c.url)), 60, "the cluster's JetStream")
        yield c
    finally:
        c.stop()


def test_killing_the_stream_leader_under_load_loses_no_job(
    cluster: Cluster, tmp_path: Path
) -> None:
    stack = Stack(
        tmp_path / "berth",
        cluster.url,
        env={**FAST, "BERTH_NATS_REPLICAS": "3", "BERTH_NATS_TIMEOUT": "5"},
    )
    stack.start()
    try:
        # A sync request is answered within 20 s (a 504 past that): the callers' own 40 s
        # bound then catches a request Berth forgot, not one that waited out an election.
        stack.deploy(
            "steady",
            "probe",
            min_replicas=1,
            max_replicas=1,
            concurrency_per_replica=8,
            request_timeout=20,
        )
        stack.wait_ready("steady")
        leader = asyncio.run(_leader(cluster.url, names.REQUESTS_STREAM))
        victim = leader.removeprefix("n-")

        stop = threading.Event()
        outcomes: list[tuple[float, int, str]] = []  # (when, status, error code)
        jobs: list[str] = []
        lock = threading.Lock()

        def caller(n: int) -> None:
            with httpx.Client(
                base_url=stack.url,
                headers={"Authorization": f"Bearer {stack.token}"},
                timeout=40,
            ) as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    headers = {"X-OctoAI-Async": "1"} if i % 4 == 0 else {}
                    try:
                        r = c.post("/e/steady/infer", json={"prompt": f"{n}-{i}"}, headers=headers)
                    except httpx.HTTPError as exc:
                        with lock:
                            outcomes.append((time.monotonic(), 0, type(exc).__name__))
                        continue
                    code = "" if r.status_code < 400 else r.json()["error"]["code"]
                    with lock:
                        outcomes.append((time.monotonic(), r.status_code, code))
                        if r.status_code == 202:
                            jobs.append(r.json()["response_id"])

        with ThreadPoolExecutor(4) as pool:
            for n in range(4):
                pool.submit(caller, n)
            time.sleep(3)  # steady load first (the figures' baseline)
            killed_at = time.monotonic()
            with lock:
                in_flight_before = len(outcomes)
            cluster.nodes[victim].stop()
            time.sleep(8)  # the cluster elects a new leader; Berth goes on
            cluster.start(victim)
            time.sleep(5)  # the node catches up
            stop.set()

        after = [o for o in outcomes if o[0] >= killed_at]
        errors = [o for o in after if o[1] not in (200, 202)]
        ok_after = sorted(o[0] for o in after if o[1] in (200, 202))
        # The longest stretch without an answer from the kill on (the election's cost).
        gaps = [b - a for a, b in zip([killed_at, *ok_after], ok_after, strict=False)]
        print(
            json.dumps(
                {
                    "killed": leader,
                    "answered_in_the_3_s_before": in_flight_before,
                    "requests_from_the_kill_on": len(after),
                    "errors_from_the_kill_on": len(errors),
                    "error_kinds": sorted({f"{s} {c}" for _, s, c in errors}),
                    "longest_gap_s": round(max(gaps), 3) if gaps else None,
                    "jobs": len(jobs),
                }
            )
        )
        # Every caller was answered or told why: a JSON error Berth names, never a hang.
        assert all(s in (200, 202, 503, 504) for _, s, _ in outcomes), sorted(
            {(s, c) for _, s, c in outcomes}
        )
        assert ok_after, "nothing was answered after the kill"
        # Every accepted job ends completed.
        assert jobs
        with stack.client() as c:
            waiting = set(jobs)  # each pass asks only of the jobs not yet seen completed

            def all_completed() -> bool:
                for job in sorted(waiting):
                    got: Any = c.get(f"/v1/requests/{job}").json()
                    assert got.get("status") in ("pending", "running", "completed"), got
                    if got.get("status") == "completed":
                        waiting.discard(job)
                return not waiting

            wait_for(all_completed, 120, "every accepted job completed")
    finally:
        stack.close()
