"""Two scalers: one holds the lease and acts; kill it and the other takes over, starting nothing twice."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import FAST, NatsServer, Stack, wait_for

pytestmark = pytest.mark.e2e


def leader(stack: Stack) -> str | None:
    leaders = [
        name
        for name, log in stack.logs.items()
        if name.startswith("scaler") and "is the leader" in log.read_text()
    ]
    assert len(leaders) <= 1, f"two leaders: {leaders}"
    return leaders[0] if leaders else None


def test_scaler_takeover(own_nats: NatsServer, tmp_path: Path) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env=FAST)
    try:
        stack.start("api", "agent", "scaler", "scaler:b")
        first = wait_for(lambda: leader(stack), 20, "a scaler to take the lease")
        stack.deploy("ha-one", max_replicas=1)
        with stack.client() as c:
            assert c.post("/e/ha-one/infer", json={"prompt": "a"}).status_code == 200

        assert stack.stop(first, signal.SIGKILL) == -signal.SIGKILL
        other = "scaler:b" if first == "scaler" else "scaler"
        stack.deploy("ha-two", max_replicas=1)
        with stack.client() as c:  # held until the other scaler takes over, then cold-started
            resp = c.post("/e/ha-two/infer", json={"prompt": "b"})
            assert resp.status_code == 200, resp.text
            assert "is the leader" in stack.logs[other].read_text()
            for name in ("ha-one", "ha-two"):
                events = c.get(f"/v1/events/{name}").json()
                started = sum(
                    e["event"]["details"].get("start", 0)
                    for e in events
                    if e["event"]["type"] == "scale_decision"
                )
                assert started == 1, f"{name}: {started} starts for one replica"
    finally:
        stack.close()


def test_follower_does_not_act(own_nats: NatsServer, tmp_path: Path) -> None:
    """With the leader stopped cleanly, the follower takes over at once (the lease is released)."""
    stack = Stack(tmp_path / "berth", own_nats.url, env=FAST)
    try:
        stack.start("api", "agent", "scaler")
        wait_for(lambda: leader(stack), 20, "the first scaler to lead")
        stack.start("scaler:b")
        stack.deploy("ha-three", max_replicas=1)
        with stack.client() as c:
            assert c.post("/e/ha-three/infer", json={"prompt": "c"}).status_code == 200
        assert "is the leader" not in stack.logs["scaler:b"].read_text()  # it only watched
        assert stack.stop("scaler") == 0  # clean stop releases the lease
        wait_for(
            lambda: "is the leader" in stack.logs["scaler:b"].read_text(),
            10,
            "the follower to take over",
        )
    finally:
        stack.close()
