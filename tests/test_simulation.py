"""The real scaler loop on a virtual clock against the simulation's modelled fleet
(``bench/simulate.py``): how it reacts to bursts, steady load and silence."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

from bench.simulate import COLD_START, Berth, World, arrivals, rate_steady
from bench.virtual_time import VirtualTimeLoop
from scaler.policy import STABLE_WINDOW
from shared.messages import EndpointSpec

SPEC = EndpointSpec(name="ep", max_replicas=4, scale_to_zero=120)


def simulate(
    spec: EndpointSpec,
    times: list[float],
    until: float,
    watch: Callable[[World], Coroutine[Any, Any, None]] | None = None,
    service: Callable[[random.Random], float] | None = None,
) -> World:
    """Requests of ``spec`` arriving at ``times`` through the real scaler, for ``until``
    virtual seconds; ``watch`` runs beside it."""
    loop = VirtualTimeLoop()

    async def main() -> World:
        world = World([spec], seed=7) if service is None else World([spec], 7, service)
        for t in times:
            loop.call_at(t, world.arrive, spec.name)
        tasks = [asyncio.create_task(Berth().run(world))]
        if watch is not None:
            tasks.append(asyncio.create_task(watch(world)))
        await asyncio.sleep(until)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return world

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def every_second(timeline: list[int]) -> Callable[[World], Coroutine[Any, Any, None]]:
    """A watcher that records the endpoint's live replicas once a virtual second."""

    async def watch(world: World) -> None:
        while True:
            timeline.append(len(world.endpoints[SPEC.name].live))
            await asyncio.sleep(1.0)

    return watch


def starts_into(starts: list[float]) -> Callable[[World], Coroutine[Any, Any, None]]:
    """A watch that notes the (virtual) time of every replica start."""

    async def watch(world: World) -> None:
        original = world.start

        def start(name: str, rid: str | None = None) -> str:
            starts.append(world.now)
            return original(name, rid)

        world.start = start  # type: ignore[method-assign]

    return watch


def test_a_burst_at_zero_starts_max_replicas_within_200_ms() -> None:
    """Issue #6's bar: 100 requests to an endpoint at zero with max 4, all 4 starts issued
    within 200 ms of the first (here in virtual time, through the loop's throttling)."""
    starts: list[float] = []
    watch = starts_into(starts)

    burst = [1.0 + i * 0.001 for i in range(100)]
    world = simulate(SPEC, burst, until=30.0, watch=watch)
    assert len(starts) == 4
    assert starts[-1] - burst[0] <= 0.2
    assert len(world.waits) == 100  # all served
    assert max(world.waits) < COLD_START + 100 * 0.5 * 1.6 / 4


def test_steady_load_is_sized_to_the_utilisation_target() -> None:
    """1.5 req/s of ~0.5 s work keeps 0.75 replicas busy: at 50 % that is 2 replicas,
    held (not the peak of the minute, not one replica saturated). A chance flurry may
    start one more for a few seconds."""
    timeline: list[int] = []
    times = arrivals(random.Random(3), rate_steady, hours=0.25)
    simulate(SPEC, times, until=900.0, watch=every_second(timeline))
    settled = timeline[int(STABLE_WINDOW) + 30 :]
    share_at_two = settled.count(2) / len(settled)
    assert share_at_two > 0.8, sorted(set(settled))
    assert sum(settled) / len(settled) < 2.2


def test_after_a_burst_surplus_replicas_go_then_the_last_after_scale_to_zero() -> None:
    """A 20 s burst at 12 req/s brings the endpoint to max; a trickle follows. The surplus
    goes within about a stable window of the burst's end; the last replica stays while the
    trickle goes on and stops scale_to_zero seconds after the last request."""
    rng = random.Random(5)
    burst = sorted(100.0 + rng.uniform(0, 20) for _ in range(240))
    trickle = [150.0 + 10 * i for i in range(20)]  # until 340 s
    timeline: list[int] = []
    simulate(SPEC, burst + trickle, until=700.0, watch=every_second(timeline))
    assert max(timeline[100:130]) == SPEC.max_replicas
    after = 120 + int(STABLE_WINDOW) + 40  # burst over, its queue drained, a window passed
    assert set(timeline[after:340]) == {1}
    assert timeline[340 + SPEC.scale_to_zero - 5] == 1
    assert timeline[340 + SPEC.scale_to_zero + 5 :] == [0] * (700 - 345 - SPEC.scale_to_zero)


def test_long_requests_behind_short_estimates_still_get_replicas() -> None:
    """The replicas' average says a request takes 10 ms; then come requests of 20 s. By
    the estimates one replica clears the queue in no time, but the queue does not move:
    after a cold start of that, a replica starts per request waiting, long before the
    first long request ends."""
    served = [0]

    def service(_: random.Random) -> float:
        served[0] += 1
        return 0.01 if served[0] <= 75 else 20.0

    fast = [1.0 + i for i in range(75)]  # one a second: the estimates settle
    slow = [80.0 + i * 0.1 for i in range(3)]
    timeline: list[int] = []
    simulate(SPEC, fast + slow, until=98.0, watch=every_second(timeline), service=service)
    assert timeline[78] == 1  # the fast ones need one replica (the cold start's extras gone)
    # The first long request runs from 80 s to 100 s; the other two would wait for it.
    assert max(timeline[80:98]) == 3


def test_no_replica_starts_after_scale_to_zero_without_a_request() -> None:
    """The README tour's endpoint (scale_to_zero 30 s, shorter than the steady window):
    light use, then silence. After the scale down to zero, nothing starts again until
    the next request; before the fix it flapped 1 → 0 → 1 for the rest of the window."""
    spec = EndpointSpec(name="ep", max_replicas=2, scale_to_zero=30)
    starts: list[float] = []
    watch = starts_into(starts)

    light = [10.0 + 7 * i for i in range(8)]  # a request every 7 s until 59 s
    later = [400.0]  # and one much later
    timeline: list[int] = []

    async def both(world: World) -> None:
        await asyncio.gather(watch(world), every_second(timeline)(world))

    simulate(spec, light + later, until=500.0, watch=both)
    quiet = [t for t in starts if light[-1] + 1 < t < later[0]]
    assert quiet == [], quiet
    assert timeline[light[-1].__int__() + 40 : 399] == [0] * (399 - int(light[-1]) - 40)
    assert len([t for t in starts if t >= later[0]]) == 1  # the next request starts one
