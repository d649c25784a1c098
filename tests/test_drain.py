"""An API instance drains before it stops (BERTH_DRAIN_SECONDS): after SIGTERM its
/healthz answers 503 while it still serves, so that a load balancer takes it out first;
then it stops by itself. Without the setting it stops at once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST, NatsServer, Stack, wait_for

pytestmark = pytest.mark.e2e


def test_sigterm_drains_then_stops(own_nats: NatsServer, tmp_path: Path) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env={**FAST, "BERTH_DRAIN_SECONDS": "2.5"})
    try:
        stack.start("api")
        api = stack.procs["api"]
        with stack.client() as c:
            assert c.get("/healthz").json() == {"status": "ok"}
            api.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            health = wait_for(
                lambda: (r := c.get("/healthz")).status_code == 503 and r, 5, "a draining /healthz"
            )
            assert health.json()["error"]["code"] == "draining"
            assert c.get("/v1/endpoints").status_code == 200  # still serving meanwhile
        assert api.wait(20) in (0, -signal.SIGTERM)  # stopped by itself
        took = time.monotonic() - signalled
        assert 2.0 < took < 15, f"stopped {took:.1f} s after SIGTERM"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{stack.url}/healthz", timeout=2)
    finally:
        stack.close()


def test_without_the_setting_sigterm_stops_at_once(own_nats: NatsServer, tmp_path: Path) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env=FAST)
    try:
        stack.start("api")
        api = stack.procs["api"]
        signalled = time.monotonic()
        api.send_signal(signal.SIGTERM)
        assert api.wait(20) in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled < 5  # no drain: nothing holds it
    finally:
        stack.close()
