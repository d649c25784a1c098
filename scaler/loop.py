"""The scaler: observe backlog, replicas and activity; decide with the policy; act via agents.

It reacts to each request the moment it lands (the API's demand nudge on
``berth.demand.<endpoint>``) and looks at every endpoint once per tick, which
also covers a lost nudge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from broker.commands import on_demand, on_replica_events
from broker.connection import Broker
from broker.envelope import Reply
from broker.jetstream import Backlog
from broker.lease import Lease
from broker.registry import KvView
from scaler.actions import Actions, NatsActions
from scaler.placement import place
from scaler.policy import (
    BURST_WINDOW,
    STABLE_WINDOW,
    Decision,
    Observation,
    ReplicaView,
    active_replicas,
    decide,
)
from scaler.state import (
    EndpointState,
    PendingStart,
    StartFailure,
    failed_again,
    no_capacity_reason,
    unsatisfiable_by,
)
from scaler.traffic import Traffic
from shared import names
from shared.instance_types import parse_instance_type
from shared.messages import (
    AgentRecord,
    EndpointHealth,
    EndpointSpec,
    ReplicaRecord,
    ReplicaState,
    StartReplica,
    StopReplica,
)
from shared.metrics import ACTUAL, DECISIONS, DESIRED
from shared.settings import ScalerSettings
from workers import tracing

__all__ = ["Scaler"]

log = logging.getLogger(__name__)

# An endpoint with live replicas is evaluated at most this often on demand.
MIN_PASS_INTERVAL = 0.05
# An idle endpoint (nothing running, nothing asked) is looked at on a timer this often.
IDLE_SWEEP = 10.0


class Scaler:
    """The scaling loop. ``actions`` and ``clock`` are the world it observes and acts on:
    NATS and the wall clock in production, a modelled fleet and a virtual clock in the
    simulation."""

    def __init__(
        self,
        settings: ScalerSettings,
        broker: Broker,
        *,
        actions: Actions | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.broker = broker
        self.actions: Actions = actions or NatsActions(broker, settings.nats_timeout)
        self.clock = clock
        self.endpoints: KvView[EndpointSpec] = KvView(
            broker, names.KV_ENDPOINTS, EndpointSpec, self._spec_changed
        )
        self.replicas: KvView[ReplicaRecord] = KvView(
            broker, names.KV_REPLICAS, ReplicaRecord, self._replica_changed
        )
        self.agents: KvView[AgentRecord] = KvView(broker, names.KV_AGENTS, AgentRecord)
        self.pending: dict[str, PendingStart] = {}
        self.state: dict[str, EndpointState] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._started_at = clock()
        self.lease = Lease(broker, f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}")

    def of(self, endpoint: str) -> EndpointState:
        """The endpoint's state (made on first use)."""
        state = self.state.get(endpoint)
        if state is None:
            state = self.state[endpoint] = EndpointState()
        return state

    def failure(self, endpoint: str) -> StartFailure | None:
        state = self.state.get(endpoint)
        return state.failure if state is not None else None

    @property
    def leader(self) -> bool:
        """Only the lease holder acts; the others observe, ready to take over."""
        return self.lease.held

    def _spec_changed(self, endpoint: str, spec: EndpointSpec | None) -> None:
        state = self.of(endpoint)
        if spec is None:  # deleted: forget it (its replicas are drained by the next pass)
            state.forget()
        failure = state.failure
        if failure is not None and (spec is None or spec.replica_digest() != failure.digest):
            # New code or config (a fix, or a new endpoint of the same name): a start
            # failure of the old one says nothing about it, so try at once.
            state.failure = None
        self._mark(endpoint)

    def _replica_changed(self, key: str, record: ReplicaRecord | None) -> None:
        endpoint, _, replica_id = key.partition(".")
        seen = self.of(endpoint).keys
        state = None if record is None else (record.state, record.in_flight, record.digest)
        if state == seen.get(key):
            return  # a heartbeat: nothing the policy acts on has changed
        if state is None:
            del seen[key]
        else:
            seen[key] = state
        # The start is no longer pending once its agent reports the replica, however
        # briefly: a replica that fails at once must not count as starting for ever.
        self.pending.pop(replica_id, None)
        self._mark(endpoint)

    def _mark(self, endpoint: str) -> None:
        self._dirty.add(endpoint)
        self._wake.set()

    def shutdown(self) -> None:
        self._shutdown.set()
        self._wake.set()

    async def run(self) -> None:
        for view in (self.endpoints, self.replicas, self.agents):
            await view.start()
        subs = [
            await on_demand(self.broker, self.demand),
            await on_replica_events(self.broker, self._on_replica_event),
        ]
        log.info(
            "scaler %s running (%d endpoints known)", self.lease.holder, len(self.endpoints.items)
        )
        lease = asyncio.create_task(self._hold_lease(), name="scaler-lease")
        try:
            await self.serve()
        finally:
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease
            await self.lease.release()
            for sub in subs:
                await sub.close()
            for view in (self.endpoints, self.replicas, self.agents):
                await view.stop()

    async def _hold_lease(self) -> None:
        while True:
            was = self.leader
            if await self.lease.hold() and not was:
                log.info("scaler %s is the leader", self.lease.holder)
                for state in self.state.values():  # a new leader judges from what it has seen
                    state.traffic = Traffic()
                # Starts the old leader had in flight are unknown here; their replicas
                # show up in the replicas bucket within moments.
                self.pending.clear()
                for endpoint in self.endpoints.items:
                    self._mark(endpoint)
            elif was and not self.leader:
                log.warning("scaler %s is no longer the leader", self.lease.holder)
            await asyncio.sleep(names.LEASE_TTL / 3)

    def _tick_endpoints(self, tick: int, now: float | None = None) -> set[str]:
        """What a timer pass looks at: every endpoint with something to watch, and a slice
        of the idle ones (no replica, no start under way, min 0, no failure) and of those
        at rest (replicas idle, nothing to do before their scale_to_zero is due).

        Demand, spec and replica changes wake an endpoint at once; the sweep only backs
        up a lost demand nudge, so each idle endpoint is looked at every IDLE_SWEEP
        seconds rather than every tick: with a thousand idle endpoints, warm or not, the
        scaler's cost is a few consumer lookups a tick, not a thousand.
        """
        now = self.clock() if now is None else now
        busy = {r.endpoint for r in self.replicas.items.values()}
        busy |= {p.endpoint for p in self.pending.values()}
        busy |= {name for name, state in self.state.items() if state.failure is not None}
        slices = max(1, round(IDLE_SWEEP / self.settings.tick_interval))
        chosen = busy - set(self.endpoints.items)  # deleted, with replicas left to drain
        for name, spec in self.endpoints.items.items():
            state = self.state.get(name)
            resting_until = state.resting_until if state is not None else None
            watch = name in busy and (resting_until or 0.0) <= now
            if (
                watch
                or (spec.min_replicas > 0 and resting_until is None)
                or zlib.crc32(name.encode()) % slices == tick % slices
            ):
                chosen.add(name)
        return chosen

    async def serve(self) -> None:
        """Evaluate endpoints as they change and on every tick, until shut down."""
        tick = 0
        next_tick = self.clock()
        while not self._shutdown.is_set():
            now = self.clock()
            deferred = [st.deferred for st in self.state.values() if st.deferred is not None]
            wake_at = min([next_tick, *(t + MIN_PASS_INTERVAL for t in deferred)])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - now)):
                    await self._wake.wait()
            if self._shutdown.is_set():
                return
            self._wake.clear()
            now = self.clock()
            todo = set(self._dirty)
            self._dirty.clear()
            if now >= next_tick:
                todo |= self._tick_endpoints(tick, now)
                tick += 1
                next_tick = now + self.settings.tick_interval
            if not self.leader:  # observe only; the holder acts
                for state in self.state.values():
                    state.deferred = None
                continue
            for endpoint in sorted(todo):
                state = self.of(endpoint)
                last = state.last_pass
                # A stream of requests to a serving endpoint costs a few passes a second,
                # not one per request; an endpoint with nothing live is looked at at once.
                if now < last + MIN_PASS_INTERVAL and self._live(endpoint, now):
                    state.deferred = last
                    continue
                state.deferred = None
                state.last_pass = now
                try:
                    await self.evaluate(endpoint)
                except Exception:
                    log.exception("evaluating %s failed", endpoint)
            self._dirty |= {n for n, st in self.state.items() if st.deferred is not None}

    # -- inputs ----------------------------------------------------------------------------

    async def demand(self, endpoint: str, seen: str) -> None:
        """A request for ``endpoint`` just arrived (served under spec digest ``seen``)."""
        now = self.clock()
        state = self.of(endpoint)
        state.activity = now
        failure = state.failure
        if (
            self.leader
            and failure is not None
            and failure.digest == seen
            and now < failure.until
            and not self._live(endpoint, now)
        ):
            # The model cannot start right now: answer at once instead of queueing.
            await self._fail_waiting(endpoint, failure)
        if state.deferred is None:  # a pass is already due; don't wake for each request
            self._mark(endpoint)

    async def _on_replica_event(self, event: dict[str, Any], replica_id: str | None) -> None:
        endpoint, type_ = event.get("endpoint", ""), event.get("type")
        now = self.clock()
        self.pending.pop(replica_id or "", None)
        if type_ == "replica_start_failed":
            failure = failed_again(
                self.failure(endpoint),
                event["details"],
                now,
                self.settings.start_backoff,
                self.settings.start_backoff_max,
            )
            count, delay = failure.count, failure.until - now
            self.of(endpoint).failure = failure
            if not self.leader:
                return
            await self.actions.event(
                "scale",
                endpoint,
                "start_backoff",
                level="warning",
                reason=failure.reason,
                retry_in_s=round(delay, 1),
                failures=count,
            )
            if count >= self.settings.failing_after:
                await self._mark_failing(
                    endpoint, failure, first=count == self.settings.failing_after
                )
            if not self._live(endpoint, now, exclude=replica_id):
                await self._fail_waiting(endpoint, failure)
        elif type_ == "replica_ready":
            await self._clear_failure(endpoint, "a replica became ready")
        self._mark(endpoint)

    async def _mark_failing(self, endpoint: str, failure: StartFailure, *, first: bool) -> None:
        """Past ``failing_after`` failed starts in a row the endpoint is marked failing:
        shown on the endpoint, said once in its events; starts go on being tried at
        the back-off's pace, and requests are answered at once with the reason."""
        previous = self.of(endpoint).failing
        since = previous.since if previous else self.clock()
        health = EndpointHealth(
            endpoint=endpoint,
            reason=failure.reason,
            failures=failure.count,
            since=since,
            retry_at=failure.until,
            digest=failure.digest,
        )
        self.of(endpoint).failing = health
        await self.actions.mark_health(endpoint, health)
        if first or previous is None:
            await self.actions.event(
                "scale",
                endpoint,
                "endpoint_failing",
                level="warning",
                reason=failure.reason,
                failures=failure.count,
            )

    async def _clear_failure(self, endpoint: str, why: str) -> None:
        state = self.of(endpoint)
        was_failing, state.failure, state.failing = state.failing, None, None
        if was_failing is not None and self.leader:
            await self.actions.mark_health(endpoint, None)
            await self.actions.event("scale", endpoint, "endpoint_recovered", reason=why)

    async def _fail_waiting(self, endpoint: str, failure: StartFailure) -> None:
        message = f"no replica of endpoint {endpoint!r} could start: {failure.reason}"
        reply = Reply.failure(503, "replica_failed", message)
        now = self.clock()
        reply.headers.append(("retry-after", str(max(1, round(failure.until - now)))))
        failed = await self.actions.fail_queued(endpoint, reply, before=now)
        if failed:
            log.warning("%s: failed %d queued request(s): %s", endpoint, failed, failure.reason)

    def _live(self, endpoint: str, now: float, exclude: str | None = None) -> bool:
        """Whether any replica of the endpoint is starting or ready (or about to be)."""
        if any(p.endpoint == endpoint and p_id != exclude for p_id, p in self.pending.items()):
            return True
        return any(
            r.replica_id != exclude and r.state in (ReplicaState.STARTING, ReplicaState.READY)
            for r in self.records(endpoint, now)
        )

    def records(self, endpoint: str, now: float) -> list[ReplicaRecord]:
        """The endpoint's replicas, as their agents last reported them (fresh ones only)."""
        items = self.replicas.items
        state = self.state.get(endpoint)
        found = [items.get(key) for key in state.keys] if state is not None else []
        return [r for r in found if r is not None and r.fresh(now)]

    # -- decide and act --------------------------------------------------------------------

    def observe(self, endpoint: str, spec: EndpointSpec, bl: Backlog, now: float) -> Observation:
        records = self.records(endpoint, now)
        for rid, p in list(self.pending.items()):
            if now - p.issued_at > self.settings.start_timeout:
                del self.pending[rid]
        state = self.of(endpoint)
        last = max(
            [state.activity if state.activity is not None else self._started_at]
            + [r.last_done_at for r in records if r.last_done_at]
        )
        failure = state.failure
        digest = spec.replica_digest()
        current = [r for r in records if r.digest == digest]
        if served := [r.service_s for r in current if r.service_s is not None]:
            state.service_s = sum(served) / len(served)
        if starts := [r.ready_at - r.started_at for r in current if r.ready_at is not None]:
            state.cold_start_s = sum(starts) / len(starts)
        traffic = state.traffic
        traffic.add(now, bl, records)
        return Observation(
            spec=spec,
            queued=bl.queued,
            in_flight=bl.in_flight,
            replicas=tuple(
                ReplicaView(
                    r.replica_id, r.state, r.in_flight, r.ready_at, current=r.digest == digest
                )
                for r in records
            ),
            pending_starts=sum(1 for p in self.pending.values() if p.endpoint == endpoint),
            last_activity=last,
            now=now,
            backoff_until=failure.until if failure else 0.0,
            arrival_rate=traffic.rate(BURST_WINDOW),
            stalled_s=traffic.stalled(now),
            mean_in_flight=traffic.busy(STABLE_WINDOW),
            service_s=state.service_s,
            cold_start_s=state.cold_start_s,
            utilisation=self.settings.target_utilisation,
        )

    async def evaluate(self, endpoint: str) -> Decision:
        now = self.clock()
        spec = self.endpoints.items.get(endpoint)
        if spec is None:  # deleted: drain whatever still runs
            for gauge in (ACTUAL, DESIRED):
                with contextlib.suppress(KeyError):
                    gauge.remove(endpoint)
            for r in self.records(endpoint, now):
                await self._stop(r, "endpoint deleted", only_if_idle=False)
            return Decision()
        failure = self.failure(endpoint)
        if failure is not None and failure.digest and failure.digest != spec.replica_digest():
            # A new config is a new chance: the old one's failures do not hold it back.
            await self._clear_failure(endpoint, "the endpoint's config changed")
        bl = await self.actions.backlog(endpoint) or Backlog(queued=0, in_flight=0)
        obs = self.observe(endpoint, spec, bl, now)
        decision = decide(obs)
        self._rest(endpoint, obs, decision)
        active = active_replicas(obs)
        ACTUAL.labels(endpoint).set(active)
        DESIRED.labels(endpoint).set(active + decision.start - len(decision.stop))
        if decision.noop:
            return decision
        DECISIONS.labels(endpoint, decision.kind or "other").inc()
        if tracing.ENABLED:
            tracing.record(
                f"scale {endpoint}",
                time.time(),
                {
                    "berth.endpoint": endpoint,
                    "berth.scale.kind": decision.kind,
                    "berth.scale.reason": decision.reason,
                    "berth.scale.start": decision.start,
                    "berth.scale.stop": len(decision.stop),
                    "berth.queue_length": obs.queued,
                    "berth.in_flight": obs.in_flight,
                },
            )
        log.info("%s: %s", endpoint, decision.reason)
        started = 0
        for _ in range(decision.start):
            if not await self._start(spec, now):
                break
            started += 1
        for rids, idle_only in ((decision.stop, True), (decision.drain, False)):
            for rid in rids:
                record = self.replicas.items.get(names.replica_key(endpoint, rid))
                if record is not None:
                    await self._stop(record, decision.reason, only_if_idle=idle_only)
        await self.actions.event(
            "scale",
            endpoint,
            "scale_decision",
            reason=decision.reason,
            start=started,
            stop=list(decision.stop),
            drain=list(decision.drain),
            queued=obs.queued,
            in_flight=obs.in_flight,
        )
        if started < decision.start:
            await self.actions.event(
                "scale",
                endpoint,
                "no_capacity",
                level="warning",
                reason=no_capacity_reason(spec, decision.start - started),
            )
            unsatisfiable = unsatisfiable_by(spec, list(self.agents.items.values()), now)
            if started == 0 and unsatisfiable and not self._live(endpoint, now):
                # Waiting would not help: no host could ever run it. Say so at once.
                failure = StartFailure(
                    count=1,
                    until=now + self.settings.start_backoff,
                    reason=unsatisfiable,
                    digest=spec.replica_digest(),
                )
                self.of(endpoint).failure = failure
                await self._fail_waiting(endpoint, failure)
        return decision

    def _rest(self, endpoint: str, obs: Observation, decision: Decision) -> None:
        """Leave the endpoint to the idle sweep until its scale_to_zero is due, if nothing
        but that could change what the policy decides: no request queued or running, no
        start under way, no replica in flux, none beyond the one traffic would keep."""
        spec = obs.spec
        settled = all(r.state is ReplicaState.READY and r.current for r in obs.replicas)
        if (
            decision.noop
            and obs.queued + obs.in_flight == 0
            and obs.pending_starts == 0
            and self.failure(endpoint) is None
            and settled
            and len(obs.replicas) <= max(spec.min_replicas, 1)
        ):
            due = obs.last_activity + spec.scale_to_zero
            self.of(endpoint).resting_until = (
                due if len(obs.replicas) > spec.min_replicas else float("inf")
            )
        else:
            self.of(endpoint).resting_until = None

    async def _start(self, spec: EndpointSpec, now: float) -> bool:
        # An agent's own count of used slots is a heartbeat old; its replica records are newer.
        live = Counter(r.agent_id for r in self.replicas.items.values() if r.fresh(now))
        agents = [
            a.model_copy(update={"used_slots": max(a.used_slots, live[a.agent_id])})
            for a in self.agents.items.values()
            if a.fresh(now)
        ]
        on_agent = Counter(r.agent_id for r in self.records(spec.name, now))
        pending_on = Counter(p.agent_id for p in self.pending.values())
        try:
            need = parse_instance_type(spec.instance_type)
        except ValueError:  # the API validates it; an older spec may not be
            return False
        pending_gpus_on: Counter[str] = Counter()
        for p in self.pending.values():
            if need.gpu_type is not None and p.gpu_type == need.gpu_type:
                pending_gpus_on[p.agent_id] += p.gpus
        tried: set[str] = set()
        while (
            agent_id := place(
                agents,
                on_agent,
                pending_on,
                need=need,
                runtime="docker" if spec.image_url else "process",
                pending_gpus_on=pending_gpus_on,
                exclude=frozenset(tried),
            )
        ) is not None:
            tried.add(agent_id)
            replica_id = secrets.token_hex(4)
            cmd = StartReplica(replica_id=replica_id, spec=spec)
            # Pending before asking: the agent's record of the replica may arrive
            # (and clear the entry) before its answer does.
            self.pending[replica_id] = PendingStart(
                spec.name, agent_id, now, need.gpu_type, need.gpus
            )
            try:
                if await self.actions.start(agent_id, cmd):
                    return True
            except Exception as exc:
                log.warning("agent %s did not take a start: %r", agent_id, exc)
            self.pending.pop(replica_id, None)
        return False

    async def _stop(self, record: ReplicaRecord, reason: str, *, only_if_idle: bool) -> None:
        cmd = StopReplica(
            endpoint=record.endpoint,
            replica_id=record.replica_id,
            reason=reason,
            only_if_idle=only_if_idle,
        )
        try:
            await self.actions.stop(record.agent_id, cmd)
        except Exception as exc:
            log.warning("agent %s did not take a stop: %r", record.agent_id, exc)
