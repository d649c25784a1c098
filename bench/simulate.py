"""Berth's scaling policy against two baselines, in simulation: replica-seconds and queue waits.

``python -m bench.simulate [--hours 6] [--idle-endpoints 1000] [--seed 1]``

A discrete-event simulation with a virtual clock, one endpoint at a time
(endpoints share no capacity here: the fleet is assumed large enough). Each
endpoint gets Poisson arrivals whose rate follows a scenario, a service time per
request, one request at a time per replica, a cold start per new replica, and a
policy that decides starts and stops:

- **berth**: the real ``scaler.policy.decide``, called the way the scaler calls
  it (on each arrival, and on a 1 s tick), with the loop's bookkeeping (pending
  starts, last activity, the window peak of demand);
- **knative**: a fixed-window idle policy in the style of Knative's KPA: desired
  replicas from the average concurrency over a 60 s stable window (a 6 s panic
  window when demand doubles), evaluated every 2 s, to zero after the stable
  window and a 30 s grace period with no requests;
- **ray**: Ray Serve's default autoscaling: a target of 2 ongoing requests per
  replica, upscale after 30 s above target, downscale after 600 s below it,
  metrics every 10 s averaged over 30 s; from zero, one replica at once.

Scenarios: steady, bursty and diurnal traffic on a few endpoints, and many
endpoints that are mostly idle. Reports replica-seconds (start issued → stop,
cold start included) and queue wait (arrival → service start) percentiles.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaler.policy import Observation, ReplicaView, decide
from shared.messages import EndpointSpec, ReplicaState

COLD_START = 5.0  # s from the start command to a ready replica (model load)
TICK = 1.0


@dataclass
class Replica:
    rid: int
    started: float  # start issued
    ready_at: float | None = None
    busy: bool = False
    stopped: float | None = None


@dataclass
class Sim:
    """One endpoint under one policy."""

    spec: EndpointSpec
    rng: random.Random
    service: Callable[[random.Random], float]
    queue: deque[float] = field(default_factory=deque)  # arrival times
    replicas: dict[int, Replica] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    events: list[tuple[float, int, str, int]] = field(default_factory=list)
    last_activity: float = -1e9
    seq: int = 0
    next_rid: int = 0
    # For the baselines: samples of concurrency (in flight + queued) over time.
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    above_since: float | None = None
    below_since: float | None = None

    def push(self, at: float, kind: str, arg: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, arg))

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.stopped is None]

    @property
    def in_flight(self) -> int:
        return sum(1 for r in self.live if r.busy)

    def demand(self) -> int:
        return len(self.queue) + self.in_flight

    def start(self, now: float, n: int) -> None:
        for _ in range(n):
            r = Replica(self.next_rid, now)
            self.next_rid += 1
            self.replicas[r.rid] = r
            self.push(now + COLD_START, "ready", r.rid)

    def stop(self, now: float, rid: int) -> None:
        r = self.replicas[rid]
        if r.stopped is None and not r.busy:
            r.stopped = now

    def dispatch(self, now: float) -> None:
        for r in self.live:
            if not self.queue:
                return
            if r.ready_at is not None and not r.busy:
                arrived = self.queue.popleft()
                self.waits.append(now - arrived)
                r.busy = True
                self.push(now + self.service(self.rng), "done", r.rid)

    def replica_seconds(self, end: float) -> float:
        return sum(
            (r.stopped if r.stopped is not None else end) - r.started
            for r in self.replicas.values()
        )


# -- policies -----------------------------------------------------------------------------------


class Berth:
    """The real policy, fed as the scaler feeds it."""

    name = "berth"
    tick = TICK

    def __init__(self) -> None:
        self.window: deque[tuple[float, int]] = deque()

    def act(self, sim: Sim, now: float, why: str) -> None:
        demand = sim.demand()
        self.window.append((now, demand))
        while self.window and self.window[0][0] < now - sim.spec.scale_to_zero:
            self.window.popleft()
        views = tuple(
            ReplicaView(
                str(r.rid),
                ReplicaState.READY if r.ready_at is not None else ReplicaState.STARTING,
                in_flight=1 if r.busy else 0,
                ready_at=r.ready_at,
            )
            for r in sim.live
        )
        obs = Observation(
            spec=sim.spec,
            queued=len(sim.queue),
            in_flight=sim.in_flight,
            replicas=views,
            pending_starts=0,
            last_activity=sim.last_activity,
            now=now,
            peak_demand=max(d for _, d in self.window) if now >= sim.spec.scale_to_zero else None,
        )
        d = decide(obs)
        sim.start(now, d.start)
        for rid in d.stop:
            sim.stop(now, int(rid))


class Knative:
    """Average concurrency over a 60 s stable window (6 s when panicking), target 1 per replica."""

    name = "knative"
    tick = 2.0
    stable, panic, grace = 60.0, 6.0, 30.0

    def __init__(self) -> None:
        self.panicking_until = 0.0

    def act(self, sim: Sim, now: float, why: str) -> None:
        sim.samples.append((now, sim.demand()))
        while sim.samples and sim.samples[0][0] < now - self.stable:
            sim.samples.popleft()
        live = len(sim.live)
        if why == "arrival" and live == 0:  # the activator wakes a zero-scale revision at once
            sim.start(now, 1)
            return
        if why != "tick":
            return
        stable = statistics.fmean(d for _, d in sim.samples)
        recent = [d for t, d in sim.samples if t >= now - self.panic]
        panic = statistics.fmean(recent) if recent else 0.0
        if live and panic >= 2 * live:
            self.panicking_until = now + self.stable
        want = math.ceil(panic if now < self.panicking_until else stable)
        if want == 0 and now - sim.last_activity < self.stable + self.grace:
            want = min(live, 1)
        want = min(want, sim.spec.max_replicas)
        if now < self.panicking_until:
            want = max(want, live)  # no scale-down while panicking
        if want > live:
            sim.start(now, want - live)
        elif want < live:
            idle = [r for r in sim.live if not r.busy and r.ready_at is not None]
            for r in idle[: live - want]:
                sim.stop(now, r.rid)


class Ray:
    """Ray Serve's defaults: 2 ongoing requests per replica, 30 s up, 600 s down."""

    name = "ray"
    tick = 10.0  # metrics push interval
    target, up_delay, down_delay, look_back = 2.0, 30.0, 600.0, 30.0

    def act(self, sim: Sim, now: float, why: str) -> None:
        sim.samples.append((now, sim.demand()))
        while sim.samples and sim.samples[0][0] < now - self.look_back:
            sim.samples.popleft()
        live = len(sim.live)
        if why == "arrival" and live == 0:
            sim.start(now, 1)  # from zero: at once
            return
        if why != "tick":
            return
        avg = statistics.fmean(d for _, d in sim.samples)
        want = min(max(math.ceil(avg / self.target), sim.spec.min_replicas), sim.spec.max_replicas)
        if want > live:
            sim.above_since = sim.above_since if sim.above_since is not None else now
            sim.below_since = None
            if now - sim.above_since >= self.up_delay:
                sim.start(now, want - live)
                sim.above_since = None
        elif want < live:
            sim.below_since = sim.below_since if sim.below_since is not None else now
            sim.above_since = None
            if now - sim.below_since >= self.down_delay:
                idle = [r for r in sim.live if not r.busy and r.ready_at is not None]
                for r in idle[: live - want]:
                    sim.stop(now, r.rid)
                sim.below_since = None
        else:
            sim.above_since = sim.below_since = None


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
    t, out = 0.0, []
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return out
        if rng.random() < rate(t) / peak:
            out.append(t)


def service(rng: random.Random) -> float:
    return rng.lognormvariate(math.log(0.5), 0.4)  # ~0.5 s, some longer


def run_endpoint(
    policy: Any, times: list[float], hours: float, seed: int, spec: EndpointSpec
) -> Sim:
    sim = Sim(spec=spec, rng=random.Random(seed), service=service)
    for t in times:
        sim.push(t, "arrival")
    end = hours * 3600.0
    next_tick = 0.0
    while sim.events or next_tick < end:
        # Ticks only while something runs or waits (an idle, empty endpoint costs nothing).
        at = sim.events[0][0] if sim.events else end
        if (sim.live or sim.queue) and next_tick <= at and next_tick < end:
            policy.act(sim, next_tick, "tick")
            sim.dispatch(next_tick)
            next_tick += policy.tick
            continue
        if not sim.events or at >= end:
            break
        now, _, kind, arg = heapq.heappop(sim.events)
        next_tick = max(next_tick, math.floor(now / policy.tick) * policy.tick + policy.tick)
        if kind == "arrival":
            sim.queue.append(now)
            sim.last_activity = now
            policy.act(sim, now, "arrival")
        elif kind == "ready":
            r = sim.replicas[arg]
            if r.stopped is None:
                r.ready_at = now
        elif kind == "done":
            sim.replicas[arg].busy = False
            sim.last_activity = now
        sim.dispatch(now)
    for arrived in sim.queue:  # never served within the run
        sim.waits.append(end - arrived)
    return sim


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def scenario(
    name: str,
    rate: Callable[[float], float],
    endpoints: int,
    hours: float,
    seed: int,
    spec: EndpointSpec,
) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoints": endpoints, "hours": hours}
    traffic = [arrivals(random.Random(seed * 1000 + i), rate, hours) for i in range(endpoints)]
    out["requests"] = sum(len(t) for t in traffic)
    for make in (Berth, Knative, Ray):
        waits: list[float] = []
        replica_s = 0.0
        for i, times in enumerate(traffic):
            sim = run_endpoint(make(), times, hours, seed * 7919 + i, spec)
            waits += sim.waits
            replica_s += sim.replica_seconds(hours * 3600.0)
        out[make.name] = {
            "replica_hours": round(replica_s / 3600.0, 1),
            "wait_p50_s": round(pct(waits, 0.50), 3),
            "wait_p95_s": round(pct(waits, 0.95), 3),
            "wait_p99_s": round(pct(waits, 0.99), 3),
            "wait_mean_s": round(statistics.fmean(waits), 3) if waits else 0.0,
        }
        print(f"{name:<8} {make.name:<8} {json.dumps(out[make.name])}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hours", type=float, default=6.0)
    p.add_argument("--idle-endpoints", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="bench/results/simulate.json")
    args = p.parse_args()
    spec = EndpointSpec(name="sim", min_replicas=0, max_replicas=8, scale_to_zero=300)
    report = {
        "cold_start_s": COLD_START,
        "steady": scenario("steady", rate_steady, 5, args.hours, args.seed, spec),
        "bursty": scenario("bursty", rate_bursty, 5, args.hours, args.seed, spec),
        "diurnal": scenario("diurnal", rate_diurnal, 5, args.hours, args.seed, spec),
        "idle": scenario("idle", rate_idle, args.idle_endpoints, args.hours, args.seed, spec),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
