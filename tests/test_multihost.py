"""Berth installed as several hosts: a three-node JetStream cluster (R3), PostgreSQL, two
API instances behind a real load balancer (HAProxy), two scalers sharing the lease, and
two agents on hosts of their own (network namespaces, NATS reached over their links).

- Both API instances start together on an empty database (the migrations take turns).
- A sync request is answered whichever instance took it; the replicas run on both hosts.
- An async job taken by one instance is polled and read through the other; its callback
  is sent once, though both instances run a callback dispatcher.
- The API instances are restarted one after the other under load: no request is lost.
- The scaler holding the lease is killed: the other takes over, and starts nothing twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from shared.stores.local import encode_key
from tests.balancer import HAProxy
from tests.cluster import Cluster, js_ready
from tests.conftest import FAST, Stack, fresh_database, wait_for
from tests.netns import NetHost, netns_unavailable
from tests.test_callbacks import Receiver
from tests.test_fleet import ready_on
from tests.test_scaler_ha import leader

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(300)]


@dataclass
class Install:
    stack: Stack
    balancer: HAProxy
    receiver: Receiver  # callbacks of every test's jobs: each must arrive once
    apis: dict[str, dict[str, str]]  # each API instance's own variables

    def restart(self, name: str) -> None:
        self.stack.start(name, env={name: self.apis[name]})

    def client(self, base: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=base or self.balancer.url,
            headers={"Authorization": f"Bearer {self.stack.token}"},
            timeout=60,
        )


def _unavailable() -> str | None:
    return netns_unavailable() or HAProxy.missing()


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with fresh_database() as pg_url:
        yield from _install(tmp_path_factory.mktemp("multihost"), pg_url)


def _install(root: Path, pg_url: str) -> Iterator[Install]:
    subnet = random.randint(1, 250)
    hosts = [NetHost(subnet, 0).create(), NetHost(subnet, 1).create()]
    cluster = Cluster(root / "nats", host=hosts[0].gateway)
    stack: Stack | None = None
    balancer: HAProxy | None = None
    receiver = Receiver().start()
    # Each API instance drains 1.5 s on SIGTERM: HAProxy's health check (every 0.5 s, out
    # after two failures) takes it out before it stops accepting.
    apis = {
        name: {
            "BERTH_DATA_DIR": str(root / "berth" / name.replace(":", "-")),
            "BERTH_DRAIN_SECONDS": "1.5",
        }
        for name in ("api", "api:b")
    }
    try:
        cluster.start()
        wait_for(lambda: asyncio.run(js_ready(cluster.url)), 60, "the cluster's JetStream")
        stack = Stack(
            root / "berth",
            cluster.url,
            env={
                **FAST,
                "BERTH_DATABASE_URL": pg_url,
                "BERTH_NATS_REPLICAS": "3",
                "BERTH_NATS_TIMEOUT": "5",
                "BERTH_SLOTS": "4",  # room for every test's replicas
                # One key for every instance's secret store (each has a data folder of its own).
                "BERTH_SECRET_KEY": encode_key(os.urandom(32)),
            },
        )
        # Both API instances at once on the empty database; each has its own data folder.
        stack.start(
            "api",
            "api:b",
            "scaler",
            "scaler:b",
            "agent:a",
            "agent:b",
            env=apis,
            wrap={"agent:a": hosts[0].exec, "agent:b": hosts[1].exec},
        )
        balancer = HAProxy(root / "haproxy", {"a": stack.apis["api"], "b": stack.apis["api:b"]})
        balancer.start()
        yield Install(stack, balancer, receiver, apis)
    finally:
        receiver.stop()
        if balancer:
            balancer.stop()
        if stack:
            stack.close()
        cluster.stop()
        for host in hosts:
            host.delete()


def _deploy(install: Install, name: str, **fields: object) -> None:
    """Upload the probe model and create ``name`` through the load balancer."""
    from broker.artifacts import pack_dir
    from tests.conftest import MODELS

    with install.client() as c:
        model = c.post("/v1/models", content=pack_dir(MODELS / "probe"))
        assert model.status_code in (200, 201), model.text
        resp = c.post(
            "/v1/endpoint", json={"name": name, "model_id": model.json()["model_id"], **fields}
        )
        assert resp.status_code == 201, resp.text


def test_sync_requests_through_the_balancer(install: Install) -> None:
    _deploy(install, "spread", min_replicas=2, max_replicas=2, scale_to_zero=600)
    agents = {f"{install.stack.env['BERTH_AGENT_ID']}-{s}" for s in "ab"}
    wait_for(
        lambda: set(ready_on(install.stack, "spread").values()) == agents,
        60,
        "one replica on each host",
    )
    served: Counter[str] = Counter()
    with install.client() as c:
        for i in range(12):
            resp = c.post("/e/spread/infer", json={"prompt": f"s{i}"})
            assert resp.status_code == 200, resp.text
            assert resp.json()["output"]["prompt"] == f"s{i}"
            served[resp.headers["x-berth-served-by"]] += 1
    # Round robin; a health check slowed by a loaded machine may skew it, never empty a side.
    assert set(served) == {"a", "b"} and sum(served.values()) == 12, served


def test_a_job_taken_by_one_instance_is_read_through_the_other(install: Install) -> None:
    _deploy(install, "jobs", min_replicas=1, max_replicas=1, scale_to_zero=600)
    with install.client(install.stack.apis["api"]) as a:
        resp = a.post(
            "/e/jobs/infer",
            json={"prompt": "elsewhere", "sleep": 0.5},
            headers={"X-OctoAI-Async": "1", "X-Berth-Callback-URL": install.receiver.url},
        )
        assert resp.status_code == 202, resp.text
        job = resp.json()["response_id"]
    with install.client(install.stack.apis["api:b"]) as b:
        wait_for(
            lambda: b.get(f"/v1/requests/{job}").json()["status"] == "completed",
            60,
            "the job to complete, seen through the other instance",
        )
        body = b.get(f"/v1/responses/{job}")
        assert body.status_code == 200 and body.json()["output"]["prompt"] == "elsewhere"
        wait_for(
            lambda: b.get(f"/v1/requests/{job}").json()["callback"]["state"] == "delivered",
            30,
            "the callback's delivery in the job's log",
        )
    # Both instances run a dispatcher on one queue: it came once (and is counted again
    # at the end of the module, after the restarts).
    assert [orjson.loads(body)["data"]["response_id"] for _, body in install.receiver.got] == [job]


def test_rolling_restart_of_the_apis_loses_no_request(install: Install) -> None:
    _deploy(install, "rolling", min_replicas=2, max_replicas=2, scale_to_zero=600)
    install.stack.wait_ready("rolling")
    stop = threading.Event()
    answers: list[int] = []

    def caller(n: int) -> None:
        with install.client() as c:
            i = 0
            while not stop.is_set():
                resp = c.post("/e/rolling/infer", json={"prompt": f"{n}-{i}", "sleep": 0.05})
                answers.append(resp.status_code)
                i += 1

    with ThreadPoolExecutor(4) as pool:
        callers = [pool.submit(caller, n) for n in range(4)]
        try:
            _restart_each_api(install, answers)
        finally:
            stop.set()
        for f in callers:
            f.result(timeout=60)
    assert Counter(answers) == {200: len(answers)}, Counter(answers)


def _restart_each_api(install: Install, answers: list[int]) -> None:
    """Stop each instance in turn (as a rolling upgrade does), let the load go on through
    the other, start it again."""

    def twenty_more(what: str) -> None:
        before = len(answers)
        wait_for(lambda: len(answers) >= before + 20, 30, what)

    twenty_more("load through the balancer")
    for name in ("api", "api:b"):
        # SIGTERM: it finishes what it holds and exits by itself (not killed after the grace)
        assert install.stack.stop(name) in (0, -signal.SIGTERM)
        twenty_more(f"answers with {name} down")
        install.restart(name)
    twenty_more("answers with both back")


def test_the_scaler_lease_moves_when_its_holder_is_killed(install: Install) -> None:
    stack = install.stack
    first = wait_for(lambda: leader(stack), 20, "a scaler to hold the lease")
    assert stack.stop(first, signal.SIGKILL) == -signal.SIGKILL
    other = "scaler:b" if first == "scaler" else "scaler"
    _deploy(install, "handover", max_replicas=1, scale_to_zero=600)
    with install.client() as c:  # held until the other scaler leads, then cold-started
        resp = c.post("/e/handover/infer", json={"prompt": "after"})
        assert resp.status_code == 200, resp.text
        assert "is the leader" in stack.logs[other].read_text()
        events = c.get("/v1/events/handover").json()
        started = sum(
            e["event"]["details"].get("start", 0)
            for e in events
            if e["event"]["type"] == "scale_decision"
        )
        assert started == 1, f"{started} starts for one replica"
    assert len(install.receiver.got) == 1, "a callback was sent again"
