"""Berth's scaler against two baselines, in simulation: replica-seconds and queue waits.

``python -m bench.simulate [--hours 6] [--idle-endpoints 1000] [--seed 1] [--only steady]``

The real scaler (``scaler.loop.Scaler``: its loop, bookkeeping, placement and
``scaler.policy.decide``) runs on a virtual clock (``bench.virtual_time``)
against a modelled fleet: the world answers its backlog queries, takes its
starts and stops, and keeps the replica records an agent would keep. Requests
arrive as a Poisson process whose rate follows a scenario, each nudges the
scaler as the API does, waits in a FIFO queue, and is served by the first free
ready replica, one at a time, for a log-normal service time (~0.5 s). A
replica is ready a cold start (5 s) after its start. The fleet is large
enough: endpoints never wait for capacity.

The same world runs two baselines written for the comparison:

- **knative**: a fixed-window idle policy in the style of Knative's KPA:
  desired replicas from the average concurrency (queued + in flight, sampled
  every second) over a 60 s stable window, a 6 s panic window when that asks
  for twice the replicas there are, evaluated every 2 s, target concurrency 1
  at 70 % utilisation (its defaults); to zero after the stable window
  and a 30 s grace period without requests; from zero at once (the activator).
- **ray**: Ray Serve's default autoscaling: a target of 2 ongoing requests per
  replica, upscale after 30 s above target, downscale after 600 s below it,
  metrics every 10 s averaged over 30 s; from zero, one replica at once.

Reports replica-seconds (start issued → stop, cold starts included) and queue
wait (arrival → service start) percentiles per scenario, and writes
``bench/results/simulate.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from bench.virtual_time import VirtualTimeLoop
from broker.envelope import Reply
from broker.jetstream import Backlog
from broker.lease import Lease
from scaler.loop import Scaler
from shared import names
from shared.messages import (
    AgentRecord,
    EndpointHealth,
    EndpointSpec,
    ReplicaRecord,
    ReplicaState,
    StartReplica,
    StopReplica,
)
from shared.settings import TARGET_UTILISATION, ScalerSettings

COLD_START = 5.0  # s from the start command to a ready replica (model load)
FOREVER = math.inf


def service(rng: random.Random) -> float:
    return rng.lognormvariate(math.log(0.5), 0.4)  # ~0.5 s, some longer


# -- the world ----------------------------------------------------------------------------------


@dataclass
class Replica:
    rid: str
    endpoint: str
    started: float  # start issued
    ready_at: float | None = None
    busy: bool = False
    stopped: float | None = None


@dataclass
class Endpoint:
    spec: EndpointSpec
    queue: deque[float] = field(default_factory=deque)  # arrival times
    live: dict[str, Replica] = field(default_factory=dict)
    arrived: int = 0
    delivered: int = 0
    last_activity: float = -FOREVER

    @property
    def in_flight(self) -> int:
        return sum(r.busy for r in self.live.values())

    @property
    def demand(self) -> int:
        return len(self.queue) + self.in_flight


class World:
    """Endpoints, their queues and replicas, on the running (virtual-time) loop."""

    def __init__(
        self,
        specs: list[EndpointSpec],
        seed: int,
        service: Callable[[random.Random], float] = service,
    ):
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(seed)
        self.service = service
        self.endpoints = {s.name: Endpoint(s) for s in specs}
        # The replicas bucket as the agents keep it: one record per live replica.
        self.records: dict[str, ReplicaRecord] = {}
        self.waits: list[float] = []
        self.stopped: list[Replica] = []
        self.on_arrival: Callable[[str], None] = lambda _: None
        self.on_replica: Callable[[str], None] = lambda _: None
        self._next_rid = 0

    @property
    def now(self) -> float:
        return self.loop.time()

    def busy_endpoints(self) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if e.live or e.queue]

    def arrive(self, name: str) -> None:
        ep = self.endpoints[name]
        ep.queue.append(self.now)
        ep.arrived += 1
        ep.last_activity = self.now
        self.on_arrival(name)
        self._dispatch(ep)

    def start(self, name: str, rid: str | None = None) -> str:
        if rid is None:
            rid, self._next_rid = f"r{self._next_rid}", self._next_rid + 1
        ep = self.endpoints[name]
        replica = ep.live[rid] = Replica(rid, name, self.now)
        self.records[names.replica_key(name, rid)] = ReplicaRecord(
            endpoint=name,
            replica_id=rid,
            agent_id="sim",
            state=ReplicaState.STARTING,
            digest=ep.spec.replica_digest(),
            started_at=self.now,
            updated_at=self.now,
            ttl=FOREVER,
            busy_s=0.0,
        )
        self.loop.call_later(COLD_START, self._ready, replica)
        self.on_replica(names.replica_key(name, rid))
        return rid

    def stop(self, name: str, rid: str, *, only_if_idle: bool = True) -> bool:
        replica = self.endpoints[name].live.get(rid)
        if replica is None or (replica.busy and only_if_idle):
            return False
        del self.endpoints[name].live[rid]
        replica.stopped = self.now
        self.stopped.append(replica)
        key = names.replica_key(name, rid)
        del self.records[key]
        self.on_replica(key)
        return True

    def _ready(self, replica: Replica) -> None:
        if replica.stopped is not None:
            return
        replica.ready_at = self.now
        key = names.replica_key(replica.endpoint, replica.rid)
        record = self.records[key]
        record.state, record.ready_at = ReplicaState.READY, self.now
        self.on_replica(key)
        self._dispatch(self.endpoints[replica.endpoint])

    def _dispatch(self, ep: Endpoint) -> None:
        for replica in ep.live.values():
            if not ep.queue:
                return
            if replica.ready_at is None or replica.busy:
                continue
            self.waits.append(self.now - ep.queue.popleft())
            ep.delivered += 1
            replica.busy = True
            self.records[names.replica_key(ep.spec.name, replica.rid)].in_flight = 1
            self.loop.call_later(self.service(self.rng), self._done, replica, self.now)

    def _done(self, replica: Replica, began: float) -> None:
        ep = self.endpoints[replica.endpoint]
        replica.busy = False
        ep.last_activity = self.now
        record = self.records[names.replica_key(replica.endpoint, replica.rid)]
        took = self.now - began
        record.in_flight, record.last_done_at = 0, self.now
        record.busy_s = (record.busy_s or 0.0) + took
        # The agent's moving average (workers/supervisor.py).
        record.service_s = took if record.service_s is None else 0.8 * record.service_s + 0.2 * took
        self._dispatch(ep)

    def replica_seconds(self) -> float:
        live = [r for e in self.endpoints.values() for r in e.live.values()]
        return sum((r.stopped or self.now) - r.started for r in self.stopped + live)


# -- the controllers ----------------------------------------------------------------------------


class Controller(Protocol):
    name: str

    async def run(self, world: World) -> None: ...


class _SoleLease(Lease):
    """The simulated scaler is the only one: it always holds the lease."""

    @property
    def held(self) -> bool:
        return True


class _SimActions:
    """What the scaler does to the world: the modelled side of ``scaler.actions.Actions``."""

    def __init__(self, world: World):
        self.world = world

    async def backlog(self, endpoint: str) -> Backlog | None:
        ep = self.world.endpoints[endpoint]
        return Backlog(queued=len(ep.queue), in_flight=ep.in_flight, delivered=ep.delivered)

    async def start(self, agent_id: str, cmd: StartReplica) -> bool:
        self.world.start(cmd.spec.name, cmd.replica_id)
        return True

    async def stop(self, agent_id: str, cmd: StopReplica) -> None:
        self.world.stop(cmd.endpoint, cmd.replica_id, only_if_idle=cmd.only_if_idle)

    async def event(
        self,
        kind: Literal["scale"],
        endpoint: str,
        type_: str,
        *,
        level: Literal["normal", "warning"] = "normal",
        **details: Any,
    ) -> None:
        pass  # decisions are not reported by the simulation

    async def fail_queued(self, endpoint: str, reply: Reply, *, before: float) -> int:
        return 0  # starts never fail here

    async def mark_health(self, endpoint: str, health: EndpointHealth | None) -> None:
        pass


class Berth:
    """The real scaler: loop, bookkeeping and policy, fed as NATS and the agents feed it."""

    name = "berth"
    utilisation = TARGET_UTILISATION

    async def run(self, world: World) -> None:
        loop = asyncio.get_running_loop()
        actions = _SimActions(world)
        scaler = Scaler(
            ScalerSettings(tick_interval=1.0, target_utilisation=self.utilisation),
            broker=None,  # type: ignore[arg-type]  # every call goes through actions
            actions=actions,
            clock=loop.time,
        )
        scaler.lease = _SoleLease(None, "sim")  # type: ignore[arg-type]
        for name, ep in world.endpoints.items():
            scaler.endpoints.items[name] = ep.spec
        scaler.agents.items["sim"] = AgentRecord(
            agent_id="sim", slots=10**9, used_slots=0, updated_at=0.0, ttl=FOREVER
        )
        scaler.replicas.items = world.records
        world.on_replica = lambda key: scaler._replica_changed(key, world.records.get(key))
        digests = {name: ep.spec.replica_digest() for name, ep in world.endpoints.items()}
        tasks: set[asyncio.Task[None]] = set()

        def nudge(name: str) -> None:  # the API's demand nudge, one per request
            task = loop.create_task(scaler.demand(name, digests[name]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        world.on_arrival = nudge
        try:
            await scaler.serve()
        finally:
            scaler.shutdown()


class _Baseline:
    """A baseline's loop: from zero at once on a request; a sample of each busy endpoint's
    concurrency every second, kept for ``window`` seconds; a decision every ``tick``."""

    name = ""
    tick = 1.0
    window = 60.0

    def __init__(self) -> None:
        self.samples: dict[str, deque[tuple[float, int]]] = {}

    async def run(self, world: World) -> None:
        def wake(name: str) -> None:
            if not world.endpoints[name].live:
                world.start(name)

        world.on_arrival = wake
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            for ep in world.busy_endpoints():
                samples = self.samples.setdefault(ep.spec.name, deque())
                samples.append((world.now, ep.demand))
                while samples[0][0] < world.now - self.window:
                    samples.popleft()
                if ticks % self.tick == 0:
                    self._act(world, ep, samples)

    def _act(self, world: World, ep: Endpoint, samples: deque[tuple[float, int]]) -> None:
        raise NotImplementedError


class Knative(_Baseline):
    """Average concurrency over a 60 s stable window (6 s when panicking), target 1 per replica
    at 70 % utilisation (Knative's defaults for ``containerConcurrency: 1``); the activator
    wakes a revision at zero at once."""

    name = "knative"
    tick = 2.0
    stable, panic, grace = 60.0, 6.0, 30.0
    window = stable
    target = 1 * 0.7

    def __init__(self) -> None:
        super().__init__()
        self.panicking_until: dict[str, float] = {}

    def _act(self, world: World, ep: Endpoint, samples: deque[tuple[float, int]]) -> None:
        now, live = world.now, len(ep.live)
        stable = statistics.fmean(d for _, d in samples) / self.target
        panic = statistics.fmean(d for t, d in samples if t >= now - self.panic) / self.target
        if live and panic >= 2 * live:
            self.panicking_until[ep.spec.name] = now + self.stable
        panicking = now < self.panicking_until.get(ep.spec.name, 0.0)
        want = math.ceil(panic if panicking else stable)
        if want == 0 and now - ep.last_activity < self.stable + self.grace:
            want = min(live, 1)
        want = min(want, ep.spec.max_replicas)
        if panicking:
            want = max(want, live)  # no scale-down while panicking
        _resize(world, ep, want)


class Ray(_Baseline):
    """Ray Serve's defaults: 2 ongoing requests per replica, 30 s up, 600 s down; from zero,
    one replica at once."""

    name = "ray"
    tick = 10.0  # metrics push interval
    target, up_delay, down_delay, look_back = 2.0, 30.0, 600.0, 30.0
    window = look_back

    def __init__(self) -> None:
        super().__init__()
        self.above_since: dict[str, float] = {}
        self.below_since: dict[str, float] = {}

    def _act(self, world: World, ep: Endpoint, samples: deque[tuple[float, int]]) -> None:
        name, now, live = ep.spec.name, world.now, len(ep.live)
        avg = statistics.fmean(d for _, d in samples)
        spec = ep.spec
        want = min(max(math.ceil(avg / self.target), spec.min_replicas), spec.max_replicas)
        if want > live:
            self.below_since.pop(name, None)
            since = self.above_since.setdefault(name, now)
            if now - since >= self.up_delay:
                _resize(world, ep, want)
                del self.above_since[name]
        elif want < live:
            self.above_since.pop(name, None)
            since = self.below_since.setdefault(name, now)
            if now - since >= self.down_delay:
                _resize(world, ep, want)
                del self.below_since[name]
        else:
            self.above_since.pop(name, None)
            self.below_since.pop(name, None)


def _resize(world: World, ep: Endpoint, want: int) -> None:
    live = len(ep.live)
    for _ in range(want - live):
        world.start(ep.spec.name)
    if want < live:
        idle = [r for r in ep.live.values() if not r.busy and r.ready_at is not None]
        for r in idle[: live - want]:
            world.stop(ep.spec.name, r.rid)


# -- scenarios ----------------------------------------------------------------------------------


def rate_steady(t: float) -> float:
    return 1.5


def rate_bursty(t: float) -> float:
    return 12.0 if (t % 600.0) < 20.0 else 0.1


def rate_diurnal(t: float) -> float:
    return 0.05 + 3.0 * (1 - math.cos(2 * math.pi * t / 7200.0)) / 2  # a 2 h "day"


def rate_idle(t: float) -> float:
    return 1 / 900.0  # one request every 15 minutes, on average


def arrivals(rng: random.Random, rate: Callable[[float], float], hours: float) -> list[float]:
    """A non-homogeneous Poisson process, by thinning."""
    end, peak = hours * 3600.0, max(rate(t) for t in range(0, int(hours * 3600), 5))
    t, out = 0.0, list[float]()
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return out
        if rng.random() < rate(t) / peak:
            out.append(t)


def run_policy(
    make: Callable[[], Controller],
    traffic: dict[str, list[float]],
    spec: EndpointSpec,
    hours: float,
    seed: int,
) -> dict[str, float]:
    """One scenario's traffic through one controller, on a fresh virtual clock."""
    loop = VirtualTimeLoop()
    end = hours * 3600.0

    async def main() -> dict[str, float]:
        world = World([spec.model_copy(update={"name": n}) for n in traffic], seed)
        for name, times in traffic.items():
            for t in times:
                loop.call_at(t, world.arrive, name)
        controller = asyncio.create_task(make().run(world))
        await asyncio.sleep(end)
        controller.cancel()
        await asyncio.gather(controller, return_exceptions=True)
        waits = world.waits + [end - t for e in world.endpoints.values() for t in e.queue]
        return {
            "replica_hours": round(world.replica_seconds() / 3600.0, 1),
            "wait_p50_s": round(pct(waits, 0.50), 3),
            "wait_p95_s": round(pct(waits, 0.95), 3),
            "wait_p99_s": round(pct(waits, 0.99), 3),
            "wait_mean_s": round(statistics.fmean(waits), 3) if waits else 0.0,
        }

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


SCENARIOS: dict[str, tuple[Callable[[float], float], int | None]] = {
    # name: (rate per endpoint over time, endpoints; None = --idle-endpoints)
    "steady": (rate_steady, 5),
    "bursty": (rate_bursty, 5),
    "diurnal": (rate_diurnal, 5),
    "idle": (rate_idle, None),
}


def scenario(
    name: str,
    endpoints: int,
    hours: float,
    seed: int,
    spec: EndpointSpec,
    utilisations: list[float],
) -> dict[str, Any]:
    rate = SCENARIOS[name][0]
    traffic = {
        f"{name}-{i}": arrivals(random.Random(seed * 1000 + i), rate, hours)
        for i in range(endpoints)
    }
    out: dict[str, Any] = {
        "endpoints": endpoints,
        "hours": hours,
        "requests": sum(len(t) for t in traffic.values()),
    }
    runs: list[tuple[str, Callable[[], Controller]]] = [("berth", Berth)]
    for u in utilisations:  # the same scaler at other utilisation targets
        runs.append((f"berth@{u}", type("Berth", (Berth,), {"utilisation": u})))
    runs += [("knative", Knative), ("ray", Ray)]
    for label, make in runs:
        began = time.perf_counter()
        out[label] = run_policy(make, traffic, spec, hours, seed)
        took = time.perf_counter() - began
        print(f"{name:<8} {label:<10} {json.dumps(out[label])}  ({took:.0f} s)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hours", type=float, default=6.0)
    p.add_argument("--idle-endpoints", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale-to-zero", type=int, default=300)
    p.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    p.add_argument(
        "--utilisation",
        type=float,
        action="append",
        default=[],
        help="also run Berth at this target utilisation (repeatable)",
    )
    p.add_argument("--out", default="bench/results/simulate.json")
    args = p.parse_args()
    spec = EndpointSpec(
        name="sim", min_replicas=0, max_replicas=8, scale_to_zero=args.scale_to_zero
    )
    report: dict[str, Any] = {
        "cold_start_s": COLD_START,
        "scale_to_zero": args.scale_to_zero,
        "target_utilisation": TARGET_UTILISATION,
    }
    for name, (_, count) in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        endpoints = count if count is not None else args.idle_endpoints
        report[name] = scenario(name, endpoints, args.hours, args.seed, spec, args.utilisation)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
