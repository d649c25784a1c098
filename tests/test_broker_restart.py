"""nats-server restarted under a running Berth: the data path comes back on its own."""

from __future__ import annotations

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
