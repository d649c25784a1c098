"""The scaling policy: a pure function from what is observed to what to do.

``desired = clamp(ceil((queued + in_flight) / concurrency_per_replica), min, max)``
for scale-up, at once. Scale-down, only of replicas that are ready and idle: to
``min_replicas`` after ``scale_to_zero`` seconds without requests; and, while
traffic goes on, down to what the busiest moment of the last ``scale_to_zero``
seconds needed (never below one replica this way: zero only when idle). No I/O and no clock here: the loop passes ``now`` in, so tests
and the simulation drive it with a virtual clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shared.messages import EndpointSpec, ReplicaState

__all__ = ["Decision", "Observation", "ReplicaView", "decide"]


@dataclass(frozen=True, slots=True)
class ReplicaView:
    replica_id: str
    state: ReplicaState
    in_flight: int = 0
    ready_at: float | None = None
    # False when the replica runs an older config of the endpoint (see replica_digest).
    current: bool = True


@dataclass(frozen=True, slots=True)
class Observation:
    spec: EndpointSpec
    queued: int
    in_flight: int
    replicas: tuple[ReplicaView, ...]
    # Starts issued to agents that have not shown up as replica records yet.
    pending_starts: int
    # When the endpoint last saw a request arrive or finish.
    last_activity: float
    now: float
    # Until when starts are held back after a failed start (0 = not held).
    backoff_until: float = 0.0
    # The most requests queued + in flight at any pass in the last scale_to_zero seconds;
    # None while the loop has not watched the endpoint that long.
    peak_demand: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    start: int = 0
    # Stop these if still idle (scale-down).
    stop: tuple[str, ...] = field(default_factory=tuple)
    # Stop these after their in-flight work (outdated config): they take no new work.
    drain: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""

    @property
    def noop(self) -> bool:
        return not self.start and not self.stop and not self.drain


_LIVE = (ReplicaState.STARTING, ReplicaState.READY)


def _active(obs: Observation) -> int:
    live = sum(1 for r in obs.replicas if r.state in _LIVE and r.current)
    return live + obs.pending_starts


def _outdated(obs: Observation) -> tuple[str, ...]:
    """Replicas of an older config, to drain once the new config serves (or nothing waits)."""
    old = [r.replica_id for r in obs.replicas if r.state in _LIVE and not r.current]
    if not old:
        return ()
    new_ready = any(r.state is ReplicaState.READY and r.current for r in obs.replicas)
    idle = obs.queued + obs.in_flight == 0
    return tuple(old) if new_ready or idle or obs.spec.disabled else ()


def _stoppable(obs: Observation, count: int) -> tuple[str, ...]:
    """Up to ``count`` current replicas that are ready and idle, the youngest first."""
    idle = [
        r for r in obs.replicas if r.state is ReplicaState.READY and r.in_flight == 0 and r.current
    ]
    idle.sort(key=lambda r: r.ready_at or 0.0, reverse=True)
    return tuple(r.replica_id for r in idle[: max(0, count)])


def decide(obs: Observation) -> Decision:
    decision = _scale(obs)
    drain = _outdated(obs)
    if not drain:
        return decision
    why = f"replace {len(drain)} replica(s) running an outdated config"
    reason = f"{decision.reason}; {why}" if decision.reason else why
    return Decision(start=decision.start, stop=decision.stop, drain=drain, reason=reason)


def _scale(obs: Observation) -> Decision:
    spec = obs.spec
    active = _active(obs)
    if spec.disabled:
        stop = _stoppable(obs, active)
        return Decision(stop=stop, reason="endpoint disabled") if stop else Decision()

    demand = obs.queued + obs.in_flight
    needed = math.ceil(demand / max(1, spec.concurrency_per_replica))
    target = min(max(needed, spec.min_replicas), spec.max_replicas)

    if target > active:
        if obs.now < obs.backoff_until:
            return Decision(
                reason=f"start held back {obs.backoff_until - obs.now:.1f} s after a failed start"
            )
        why = (
            f"min_replicas={spec.min_replicas}"
            if needed <= active
            else f"{obs.queued} queued + {obs.in_flight} in flight need {needed} replica(s)"
        )
        return Decision(start=target - active, reason=f"scale up {active} → {target}: {why}")

    if active > spec.max_replicas:
        stop = _stoppable(obs, active - spec.max_replicas)
        if stop:
            return Decision(
                stop=stop, reason=f"scale down {active} → {spec.max_replicas}: above max_replicas"
            )

    idle_for = obs.now - obs.last_activity
    if demand == 0 and idle_for >= spec.scale_to_zero and active > spec.min_replicas:
        stop = _stoppable(obs, active - spec.min_replicas)
        if stop:
            return Decision(
                stop=stop,
                reason=f"scale down {active} → {active - len(stop)}: idle {idle_for:.0f} s ≥ scale_to_zero {spec.scale_to_zero} s",
            )

    if obs.peak_demand is not None:
        per = max(1, spec.concurrency_per_replica)
        keep = min(max(math.ceil(obs.peak_demand / per), spec.min_replicas, 1), spec.max_replicas)
        if active > keep:
            stop = _stoppable(obs, active - keep)
            if stop:
                return Decision(
                    stop=stop,
                    reason=f"scale down {active} → {active - len(stop)}: the busiest moment of "
                    f"the last {spec.scale_to_zero} s needed {keep} ({obs.peak_demand} requests)",
                )
    return Decision()
