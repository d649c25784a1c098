"""The scaling policy: a pure function from what is observed to what to do.

Two rules size an endpoint, both in replicas of ``concurrency_per_replica``:

- **burst**: the work arriving now plus the queue, where a queued request is
  worth a new replica only if the live ones could not clear the queue within a
  cold start: ``(rate × service + queued × service / cold_start)``. Until the
  endpoint has served a request and started a replica (no service or cold-start
  time known yet), or when the queue has not moved for a cold start (the
  estimates are wrong for this work), one replica per request waiting.
- **steady**: the load of the last ``STABLE_WINDOW`` seconds (requests in
  flight, time-averaged) at a utilisation target (``BERTH_TARGET_UTILISATION``, 0.5 by default).

Replicas start at once up to the larger of the two (within min and max); the
steady rule starts none while nothing is queued or in flight, so no replica
starts without a request that needs it.
Surplus replicas stop, only when ready and idle, once neither rule needs them:
while traffic goes on, never below one; to ``min_replicas`` only after
``scale_to_zero`` seconds without requests. No I/O and no clock here: the loop
passes ``now`` and its estimates in, so tests and the simulation drive it with
a virtual clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shared.messages import EndpointSpec, ReplicaState
from shared.settings import TARGET_UTILISATION

__all__ = [
    "BURST_WINDOW",
    "STABLE_WINDOW",
    "Decision",
    "Observation",
    "ReplicaView",
    "decide",
]

# Seconds of arrivals behind the burst rule's rate and the steady rule's load.
BURST_WINDOW = 2.0
STABLE_WINDOW = 60.0


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
    # Requests per second that arrived over the last BURST_WINDOW seconds, and requests
    # in flight on average over the last STABLE_WINDOW; None until watched that long.
    arrival_rate: float | None = None
    mean_in_flight: float | None = None
    # Seconds a request takes on a replica, and a replica takes to start (moving averages
    # the replicas report); None until one has served, or started.
    service_s: float | None = None
    cold_start_s: float | None = None
    # Seconds requests have been queued without any being delivered to a replica.
    stalled_s: float = 0.0
    # How busy replicas may be on average (ScalerSettings.target_utilisation).
    utilisation: float = TARGET_UTILISATION


@dataclass(frozen=True, slots=True)
class Decision:
    start: int = 0
    # Stop these if still idle (scale-down).
    stop: tuple[str, ...] = field(default_factory=tuple)
    # Stop these after their in-flight work (outdated config): they take no new work.
    drain: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""
    # What kind of decision, for metrics (a small fixed set; ``reason`` says the rest).
    kind: str = ""

    @property
    def noop(self) -> bool:
        return not self.start and not self.stop and not self.drain


_LIVE = (ReplicaState.STARTING, ReplicaState.READY)


def active_replicas(obs: Observation) -> int:
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
    return Decision(
        start=decision.start,
        stop=decision.stop,
        drain=drain,
        reason=reason,
        kind=decision.kind or "outdated",
    )


def _burst(obs: Observation, per: int) -> tuple[int, str]:
    """Replicas that the arriving work and the queue need now, and why."""
    demand = obs.queued + obs.in_flight
    s, cold, rate = obs.service_s, obs.cold_start_s, obs.arrival_rate
    if s is None or cold is None or rate is None:
        return (
            math.ceil(demand / per),
            f"{obs.queued} queued + {obs.in_flight} in flight",
        )
    if obs.queued and obs.stalled_s >= cold:
        # The estimates are wrong for this work (say, requests far longer than the
        # replicas' average): the queue has not moved for a cold start. Waiting is
        # the worse bet; one replica per request waiting.
        return (
            math.ceil(demand / per),
            f"{obs.queued} queued without moving for {obs.stalled_s:.1f} s + "
            f"{obs.in_flight} in flight",
        )
    work = rate * s + obs.queued * s / max(cold, s)
    need = max(math.ceil(work / per - 1e-9), 1 if demand else 0)
    return need, (
        f"{rate:.2f} req/s × {s:.2f} s + {obs.queued} queued to clear within a "
        f"{cold:.1f} s cold start"
    )


def _steady(obs: Observation, per: int) -> int | None:
    """Replicas that the stable window's load needs at the utilisation target."""
    if obs.mean_in_flight is None:
        return None
    return math.ceil(obs.mean_in_flight / (per * obs.utilisation) - 1e-9)


def _scale(obs: Observation) -> Decision:
    spec = obs.spec
    active = active_replicas(obs)
    if spec.disabled:
        stop = _stoppable(obs, active)
        return (
            Decision(stop=stop, reason="endpoint disabled", kind="disabled") if stop else Decision()
        )

    per = max(1, spec.concurrency_per_replica)
    burst, burst_why = _burst(obs, per)
    steady = _steady(obs, per)
    demand = obs.queued + obs.in_flight
    # The steady rule sizes traffic that goes on: with nothing queued or running it
    # starts no replica (the last minute's average outlives a scale to zero shorter
    # than the window, and would start a replica that idleness stops at once).
    grow = steady if demand else None
    target = min(max(burst, grow or 0, spec.min_replicas), spec.max_replicas)

    if target > active:
        if obs.now < obs.backoff_until:
            return Decision(
                reason=f"start held back {obs.backoff_until - obs.now:.1f} s after a failed start",
                kind="backoff",
            )
        if burst >= max(grow or 0, spec.min_replicas):
            why, kind = f"{burst_why} need {burst} replica(s)", "burst"
        elif grow is not None and steady is not None and steady >= spec.min_replicas:
            kind = "steady"
            why = (
                f"the last {STABLE_WINDOW:.0f} s averaged {obs.mean_in_flight:.2f} requests in "
                f"flight, {steady} replica(s) at {obs.utilisation:.0%} utilisation"
            )
        else:
            why, kind = f"min_replicas={spec.min_replicas}", "min_replicas"
        return Decision(
            start=target - active, reason=f"scale up {active} → {target}: {why}", kind=kind
        )

    if active > spec.max_replicas:
        stop = _stoppable(obs, active - spec.max_replicas)
        if stop:
            return Decision(
                stop=stop,
                reason=f"scale down {active} → {spec.max_replicas}: above max_replicas",
                kind="above_max",
            )

    idle_for = obs.now - obs.last_activity
    if demand == 0 and idle_for >= spec.scale_to_zero and active > spec.min_replicas:
        stop = _stoppable(obs, active - spec.min_replicas)
        if stop:
            return Decision(
                stop=stop,
                reason=f"scale down {active} → {active - len(stop)}: idle {idle_for:.0f} s ≥ scale_to_zero {spec.scale_to_zero} s",
                kind="idle",
            )

    if steady is not None:
        keep = min(max(steady, burst, spec.min_replicas, 1), spec.max_replicas)
        # Starting replicas are not capacity yet: a start the burst rule just made must
        # not cost a ready replica.
        ready = sum(1 for r in obs.replicas if r.state is ReplicaState.READY and r.current)
        if min(active, ready) > keep:
            stop = _stoppable(obs, min(active, ready) - keep)
            if stop:
                return Decision(
                    stop=stop,
                    reason=f"scale down {active} → {active - len(stop)}: the last "
                    f"{STABLE_WINDOW:.0f} s averaged {obs.mean_in_flight:.2f} requests in flight, "
                    f"{keep} replica(s) suffice",
                    kind="steady_down",
                )
    return Decision()
