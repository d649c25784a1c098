"""An agent killed hard mid-request: its replicas die with it, and the request is still answered."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST, NatsServer, Stack, process_alive, wait_for

pytestmark = pytest.mark.e2e


def test_agent_killed_mid_request_then_restarted(
    own_nats: NatsServer, tmp_path: Path, shared_tmp: Path
) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env=FAST)
    calls = shared_tmp / "calls.log"
    try:
        stack.start()
        stack.deploy("survive", max_replicas=1)
        with stack.client() as c:
            pid = c.post("/e/survive/infer", json={"prompt": "warm"}).json()["output"]["pid"]

        async def scenario() -> httpx.Response:
            async with stack.aclient() as ac:
                call = asyncio.create_task(
                    ac.post(
                        "/e/survive/infer",
                        json={"prompt": "survivor", "sleep": 1.0, "log": str(calls)},
                    )
                )
                await asyncio.to_thread(
                    wait_for, calls.exists, 30, "the request to reach the replica"
                )
                assert stack.stop("agent", signal.SIGKILL) == -signal.SIGKILL
                # Its replica dies with it: no orphan keeps the port or the GPU.
                await asyncio.to_thread(
                    wait_for,
                    lambda: not process_alive(pid),
                    10,
                    "the replica to die with its agent",
                )
                stack.start("agent")  # same agent id, as a service manager restarts it
                return await call

        resp = asyncio.run(scenario())
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"]["prompt"] == "survivor"
        assert resp.json()["output"]["pid"] != pid
        assert calls.read_text().split() == ["survivor", "survivor"]  # redelivered after ack_wait
    finally:
        stack.close()
