"""Several agents, one fleet: replicas spread across agents, and an agent killed mid-load
loses nothing; its replicas come back on the agents that are left."""

from __future__ import annotations

import os
import random
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST, NatsServer, Stack, wait_for
from tests.netns import NetHost, netns_unavailable

pytestmark = pytest.mark.e2e


def ready_on(stack: Stack, endpoint: str) -> dict[str, str]:
    """replica id → agent id, from the endpoint's replica_ready events."""
    with stack.client() as c:
        events = c.get(f"/v1/events/{endpoint}", params={"max_lines": 500}).json()
    return {
        e["replica_id"]: e["event"]["details"]["agent_id"]
        for e in events
        if e["event"]["type"] == "replica_ready"
    }


def test_agent_killed_mid_load_loses_nothing(own_nats: NatsServer, tmp_path: Path) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env={**FAST, "BERTH_SLOTS": "4"})
    a, b = f"{stack.env['BERTH_AGENT_ID']}-a", f"{stack.env['BERTH_AGENT_ID']}-b"
    try:
        stack.start("api", "scaler", "agent:a", "agent:b")
        with stack.client() as c:
            wait_for(
                lambda: c.get("/v1/instance-types").json()[0]["total"] == 8,
                20,
                "both agents in the fleet",
            )
        stack.deploy("fleet", min_replicas=2, max_replicas=2, scale_to_zero=600)
        wait_for(
            lambda: sorted(ready_on(stack, "fleet").values()) == sorted([a, b]),
            30,
            "one replica on each agent",
        )

        answered: list[httpx.Response] = []
        enough = threading.Event()

        def call(i: int) -> httpx.Response:
            with stack.client() as c:
                resp = c.post("/e/fleet/infer", json={"prompt": f"r{i}", "sleep": 0.3})
            answered.append(resp)
            if len(answered) >= 4:
                enough.set()
            return resp

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(call, i) for i in range(30)]
            assert enough.wait(30)
            stack.stop("agent:a", sig=signal.SIGKILL)  # its replicas die with it
            results = [f.result(timeout=90) for f in futures]
        assert [r.status_code for r in results] == [200] * 30, [r.text for r in results]
        assert sorted(r.json()["output"]["prompt"] for r in results) == sorted(
            f"r{i}" for i in range(30)
        )

        # The dead agent's replica is replaced on the agent that is left.
        def back() -> bool:
            running = [r["replica_id"] for r in stack.replicas("fleet") if r["status"] == "running"]
            placed: dict[str, Any] = ready_on(stack, "fleet")
            return len(running) == 2 and all(placed.get(rid) == b for rid in running)

        wait_for(back, 30, "two running replicas, both on the surviving agent")
    finally:
        stack.close()


def test_agents_on_separate_network_hosts(tmp_path: Path) -> None:
    """Two agents, each in a network namespace of its own (its own loopback, its own
    replicas), reaching NATS across a veth link; the one killed mid-load loses nothing."""
    reason = netns_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    subnet = random.randint(1, 250)
    hosts = [NetHost(subnet, 0), NetHost(subnet, 1)]
    try:
        for host in hosts:
            host.create()
        nats = NatsServer(tmp_path / "nats", host=hosts[0].gateway).start()
        stack = Stack(tmp_path / "berth", nats.url, env={**FAST, "BERTH_SLOTS": "4"})
        a, b = f"{stack.env['BERTH_AGENT_ID']}-a", f"{stack.env['BERTH_AGENT_ID']}-b"
        try:
            stack.start(
                "api",
                "scaler",
                "agent:a",
                "agent:b",
                wrap={"agent:a": hosts[0].exec, "agent:b": hosts[1].exec},
            )
            with stack.client() as c:
                wait_for(
                    lambda: c.get("/v1/instance-types").json()[0]["total"] == 8,
                    20,
                    "both namespaced agents in the fleet",
                )
            stack.deploy("netns", min_replicas=2, max_replicas=2, scale_to_zero=600)
            wait_for(
                lambda: sorted(ready_on(stack, "netns").values()) == sorted([a, b]),
                30,
                "one replica on each host",
            )

            def call(i: int) -> httpx.Response:
                with stack.client() as c:
                    return c.post("/e/netns/infer", json={"prompt": f"n{i}", "sleep": 0.3})

            with ThreadPoolExecutor(4) as pool:
                calls = [pool.submit(call, i) for i in range(12)]
                wait_for(lambda: sum(f.done() for f in calls) >= 2, 30, "the first answers")
                stack.stop("agent:a", sig=signal.SIGKILL)
                results = [f.result(timeout=90) for f in calls]
            assert [r.status_code for r in results] == [200] * 12

            def back() -> bool:
                running = [
                    r["replica_id"] for r in stack.replicas("netns") if r["status"] == "running"
                ]
                placed = ready_on(stack, "netns")
                return len(running) == 2 and all(placed.get(rid) == b for rid in running)

            wait_for(back, 30, "two replicas, both on the surviving host")
        finally:
            stack.close()
            nats.stop()
    finally:
        for host in hosts:
            host.delete()
