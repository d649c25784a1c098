"""What a queued job says it waits for, from replica records and the last events (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from api.jobs import waiting_for
from shared.messages import EndpointSpec, ReplicaRecord, ReplicaState

NOW = 1_000.0


def replica(state: ReplicaState, restarts: int = 0, reason: str | None = None) -> ReplicaRecord:
    return ReplicaRecord(
        endpoint="ep",
        replica_id=f"r{restarts}{state.value}",
        agent_id="a",
        state=state,
        started_at=NOW - 4.0,
        restarts=restarts,
        reason=reason,
    )


def event(type_: str, **details: Any) -> dict[str, Any]:
    return {"timestamp": NOW, "event": {"type": type_, "details": details}}


CASES = [
    pytest.param(EndpointSpec(name="ep", disabled=True), [], None, None, "disabled", id="disabled"),
    pytest.param(None, [], None, None, "scheduling", id="nothing-yet"),
    pytest.param(
        None,
        [],
        None,
        event("no_capacity", reason="no agent has a free gpu.h100"),
        "no_capacity",
        id="no-capacity",
    ),
    pytest.param(
        None, [], None, event("start_backoff", reason="exit 3"), "crash_loop", id="start-backoff"
    ),
    pytest.param(
        None,
        [replica(ReplicaState.STARTING)],
        event("image_pull_progress", image="reg/x:1", percent=40),
        None,
        "image_pull",
        id="image-pull",
    ),
    pytest.param(
        None,
        [replica(ReplicaState.STARTING)],
        event("replica_start_requested"),
        None,
        "cold_start",
        id="cold-start",
    ),
    pytest.param(
        None,
        [replica(ReplicaState.STARTING, restarts=2, reason="exited with code 1")],
        None,
        None,
        "crash_loop",
        id="restarting",
    ),
    pytest.param(
        None,
        [replica(ReplicaState.STARTING, restarts=1, reason="3 consecutive failed health checks")],
        None,
        None,
        "health_check",
        id="health-check",
    ),
    pytest.param(
        None,
        [replica(ReplicaState.FAILED, reason="setup() failed: RuntimeError")],
        None,
        event("no_capacity"),
        "crash_loop",
        id="failed-replica-wins",
    ),
]


@pytest.mark.parametrize(("spec", "replicas", "replica_event", "scale_event", "code"), CASES)
def test_waiting_for(
    spec: EndpointSpec | None,
    replicas: list[ReplicaRecord],
    replica_event: dict[str, Any] | None,
    scale_event: dict[str, Any] | None,
    code: str,
) -> None:
    got = waiting_for(spec, "ep", replicas, replica_event, scale_event, NOW)
    assert got["reason"] == code
    assert got["message"]
    if code == "image_pull":
        assert got["details"]["percent"] == 40
    if code == "no_capacity":
        assert "h100" in got["message"]
    if code == "cold_start":
        assert "4.0 s" in got["message"]
