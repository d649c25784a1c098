"""nats-server restarted under a running Berth: the data path comes back on its own."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST, NatsServer, Stack, wait_for

pytestmark = pytest.mark.e2e


def test_requests_are_answered_after_nats_server_restarts(
    own_nats: NatsServer, tmp_path: Path
) -> None:
    """Every process reconnects; a replica slot whose pull died with the server pulls again."""
    stack = Stack(tmp_path / "berth", own_nats.url, env=FAST)
    try:
        stack.start()
        stack.deploy("steady", min_replicas=1, max_replicas=1)
        with stack.client() as c:
            assert c.post("/e/steady/infer", json={"prompt": "before"}).status_code == 200

        # Killed, not stopped: a server that shuts down tells waiting pulls, a crash does not.
        assert own_nats.proc is not None
        own_nats.proc.kill()
        own_nats.proc.wait(10)
        own_nats.start()  # same port, same store: streams, consumers and KV are on disk

        def answered() -> bool:
            try:
                with stack.client() as c:
                    resp = c.post("/e/steady/infer", json={"prompt": "after"}, timeout=5)
            except httpx.HTTPError:
                return False
            return resp.status_code == 200 and resp.json()["output"]["prompt"] == "after"

        wait_for(answered, 30, "a request answered after nats-server restarted")
    finally:
        stack.close()


def test_a_frozen_nats_server_is_an_outage_not_a_crash(
    own_nats: NatsServer, tmp_path: Path, shared_tmp: Path
) -> None:
    """nats-server stops answering for longer than BERTH_NATS_TIMEOUT: a caller gets a 503
    broker_unavailable (never a 500), and an agent holding a finished job's answer keeps
    it until NATS is back, on the same replica, without running the job again."""
    stack = Stack(tmp_path / "berth", own_nats.url, env={**FAST, "BERTH_NATS_TIMEOUT": "1.5"})
    calls = shared_tmp / "calls.log"
    assert own_nats.proc is not None
    try:
        stack.start()
        stack.deploy("frozen", min_replicas=1, max_replicas=1)
        with stack.client() as c:
            first = c.post("/e/frozen/infer", json={"prompt": "warm"}).json()["output"]
            job = c.post(
                "/e/frozen/infer",
                json={"prompt": "job", "sleep": 1.0, "log": str(calls)},
                headers={"X-OctoAI-Async": "1"},
            ).json()["response_id"]
            wait_for(calls.exists, 30, "the job to start")
            own_nats.proc.send_signal(signal.SIGSTOP)  # the job ends while NATS is frozen
            try:
                resp = c.post(
                    "/e/frozen/infer",
                    json={"prompt": "p"},
                    headers={"X-OctoAI-Async": "1", "Idempotency-Key": "k1"},
                    timeout=30,
                )
                assert resp.status_code == 503, resp.text
                assert resp.json()["error"]["code"] == "broker_unavailable"
                time.sleep(2.5)  # frozen past the agent's first try to store the answer
            finally:
                own_nats.proc.send_signal(signal.SIGCONT)

            def ended() -> bool:
                return bool(c.get(f"/v1/requests/{job}").json()["status"] == "completed")

            wait_for(ended, 30, "the job to complete")
            assert c.get(f"/v1/responses/{job}").json()["output"]["pid"] == first["pid"]
        assert calls.read_text().split() == ["job"]  # run once
        assert [r["status"] for r in stack.replicas("frozen")] == ["running"]
    finally:
        if own_nats.proc.poll() is None:
            own_nats.proc.send_signal(signal.SIGCONT)
        stack.close()
