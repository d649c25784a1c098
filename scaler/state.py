"""What the scaler keeps between passes (per endpoint, per start it asked for), and the
pure rules on it: the back-off after a failed start, and why a start cannot be made.
The loop (scaler/loop.py) holds these and does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scaler.traffic import Traffic
from shared.instance_types import parse_instance_type
from shared.messages import AgentRecord, EndpointHealth, EndpointSpec, ReplicaState

__all__ = [
    "EndpointState",
    "PendingStart",
    "StartFailure",
    "failed_again",
    "no_capacity_reason",
    "unsatisfiable_by",
]


@dataclass(slots=True)
class PendingStart:
    """A start asked of an agent and not yet seen in the replicas bucket."""

    endpoint: str
    agent_id: str
    issued_at: float
    gpu_type: str | None = None
    gpus: int = 0


@dataclass(slots=True)
class StartFailure:
    """The endpoint's replicas fail to start: how many times in a row, until when the next
    start waits, why."""

    count: int
    until: float
    reason: str
    # replica_digest() of the config that failed: a request for another config is not failed by it.
    digest: str


@dataclass(slots=True)
class EndpointState:
    """What the scaler keeps of one endpoint between passes."""

    # When a request last arrived (None: none since this scaler started).
    activity: float | None = None
    # Its replicas fail to start: backing off, and since when it is marked failing.
    failure: StartFailure | None = None
    failing: EndpointHealth | None = None
    # When it was last evaluated, and since when a pass waits (MIN_PASS_INTERVAL).
    last_pass: float = 0.0
    deferred: float | None = None
    # Its recent traffic, and the last service and cold-start times its replicas showed
    # (kept while it is at zero).
    traffic: Traffic = field(default_factory=Traffic)
    service_s: float | None = None
    cold_start_s: float | None = None
    # At rest (nothing waiting or running, nothing to shrink but to zero): until when the
    # timer can leave it to the idle sweep.
    resting_until: float | None = None
    # Its keys in the replicas bucket, with what the policy cares about in each record:
    # a pass reads its own records only, and a heartbeat wakes nothing.
    keys: dict[str, tuple[ReplicaState, int, str]] = field(default_factory=dict)

    def forget(self) -> None:
        """The endpoint was deleted: all but its replicas (drained by the next pass) goes."""
        keys, failing = self.keys, self.failing
        fresh = EndpointState(keys=keys, failing=failing)
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))


def failed_again(
    previous: StartFailure | None,
    details: dict[str, Any],
    now: float,
    backoff: float,
    backoff_max: float,
) -> StartFailure:
    """A start failed (an agent's replica_start_failed event, its ``details``): one more in
    a row, the next start waiting twice as long as the last, up to ``backoff_max``."""
    count = previous.count + 1 if previous else 1
    return StartFailure(
        count=count,
        until=now + min(backoff * 2 ** (count - 1), backoff_max),
        reason=details.get("reason", "unknown"),
        digest=details.get("digest", ""),
    )


def unsatisfiable_by(spec: EndpointSpec, agents: Iterable[AgentRecord], now: float) -> str | None:
    """Why no agent of the fleet, even idle, could run a replica of ``spec``; None if one
    could (or no agent is known yet: one may come)."""
    try:
        need = parse_instance_type(spec.instance_type)
    except ValueError as exc:
        return str(exc)
    fresh = [a for a in agents if a.fresh(now)]
    if fresh and not any(a.runs(spec) for a in fresh):
        return (
            "no agent can run container images (none has a Docker engine; see BERTH_DOCKER_HOST)"
            if spec.image_url
            else "no agent runs Python models"
        )
    if need.gpu_type is None:
        return None
    for agent in fresh:
        if agent.runs(spec) and sum(g.type == need.gpu_type for g in agent.gpus) >= need.gpus:
            return None
    return (
        f"no agent offers {need.gpus} {need.gpu_type} GPU(s) on one host (instance type "
        f"{need.name}); GET /v1/instance-types lists what the fleet has"
    )


def no_capacity_reason(spec: EndpointSpec | None, missing: int) -> str:
    """Why ``missing`` replicas of ``spec`` were not started this pass: the fleet is full."""
    try:
        need = parse_instance_type(spec.instance_type) if spec else None
    except ValueError:
        need = None
    if need is not None and need.gpu_type is not None:
        return (
            f"no agent had {need.gpus} free {need.gpu_type} GPU(s) and a free slot for "
            f"{missing} replica(s) of instance type {need.name}"
        )
    return f"no agent had a free slot for {missing} replica(s)"
