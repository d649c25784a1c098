"""The scaling policy, table-driven: pure function, virtual clock."""

from __future__ import annotations

from collections import Counter

import pytest

from broker.jetstream import Backlog
from scaler.placement import place
from scaler.policy import Decision, Observation, ReplicaView, decide
from shared.messages import AgentRecord, EndpointSpec, ReplicaRecord, ReplicaState

S, R = ReplicaState.STARTING, ReplicaState.READY
NOW = 1_000.0


def obs(
    *,
    replicas: tuple[tuple[str, ReplicaState, int] | tuple[str, ReplicaState, int, bool], ...] = (),
    queued: int = 0,
    in_flight: int = 0,
    pending: int = 0,
    idle: float = 0.0,
    backoff: float = 0.0,
    rate: float | None = None,
    busy: float | None = None,
    service: float | None = None,
    cold: float | None = None,
    utilisation: float = 0.5,
    stalled: float = 0.0,
    **spec: object,
) -> Observation:
    base = {
        "name": "ep",
        "min_replicas": 0,
        "max_replicas": 4,
        "scale_to_zero": 60,
        "concurrency_per_replica": 1,
    }
    return Observation(
        spec=EndpointSpec(**(base | spec)),  # type: ignore[arg-type]
        queued=queued,
        in_flight=in_flight,
        replicas=tuple(
            ReplicaView(r[0], r[1], r[2], ready_at=float(i), current=r[3] if len(r) > 3 else True)  # type: ignore[misc]
            for i, r in enumerate(replicas)
        ),
        pending_starts=pending,
        last_activity=NOW - idle,
        now=NOW,
        backoff_until=NOW + backoff if backoff else 0.0,
        arrival_rate=rate,
        mean_in_flight=busy,
        service_s=service,
        cold_start_s=cold,
        utilisation=utilisation,
        stalled_s=stalled,
    )


CASES = [
    # name, observation, expected starts, expected stops
    ("idle at zero stays at zero", obs(idle=1e6), 0, ()),
    ("first request cold-starts one", obs(queued=1), 1, ()),
    ("backlog of 3 starts 3", obs(queued=3), 3, ()),
    ("backlog beyond max is clamped", obs(queued=100), 4, ()),
    ("concurrency divides the need", obs(queued=5, concurrency_per_replica=2), 3, ()),
    ("in-flight counts as demand", obs(replicas=(("a", R, 1),), in_flight=1, queued=1), 1, ()),
    ("a pending start is not started twice", obs(queued=1, pending=1), 0, ()),
    ("a starting replica is not started twice", obs(queued=1, replicas=(("a", S, 0),)), 0, ()),
    ("min_replicas holds without traffic", obs(min_replicas=2, idle=1e6), 2, ()),
    ("start is held during backoff", obs(queued=1, backoff=5), 0, ()),
    ("recently active keeps replicas", obs(replicas=(("a", R, 0), ("b", R, 0)), idle=10), 0, ()),
    (
        "idle past scale_to_zero stops all",
        obs(replicas=(("a", R, 0), ("b", R, 0)), idle=61),
        0,
        ("b", "a"),
    ),
    (
        "idle scale-down stops to min",
        obs(replicas=(("a", R, 0), ("b", R, 0)), idle=61, min_replicas=1),
        0,
        ("b",),
    ),
    ("never stops a busy replica", obs(replicas=(("a", R, 1),), idle=61), 0, ()),
    ("never stops a starting replica", obs(replicas=(("a", S, 0),), idle=61), 0, ()),
    ("queued work blocks scale-down", obs(replicas=(("a", R, 0),), queued=1, idle=61), 0, ()),
    (
        "lowered max stops the excess idle",
        obs(replicas=(("a", R, 0), ("b", R, 0), ("c", R, 1)), max_replicas=1, idle=1),
        0,
        ("b", "a"),
    ),
    (
        "disabled stops idle replicas",
        obs(replicas=(("a", R, 0), ("b", R, 1)), disabled=True),
        0,
        ("a",),
    ),
    ("disabled never starts", obs(queued=5, disabled=True), 0, ()),
    (
        "scale_to_zero 0 stops as soon as idle",
        obs(replicas=(("a", R, 0),), scale_to_zero=0),
        0,
        ("a",),
    ),
]


@pytest.mark.parametrize(
    ("observation", "starts", "stops"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(observation: Observation, starts: int, stops: tuple[str, ...]) -> None:
    decision = decide(observation)
    assert (decision.start, decision.stop, decision.drain) == (starts, stops, ())
    if not decision.noop:
        assert decision.reason  # every action says why


OLD = False
ROLLING = [
    # name, observation, starts, drains
    (
        "outdated idle replica is drained when nothing waits",
        obs(replicas=(("old", R, 0, OLD),)),
        0,
        ("old",),
    ),
    (
        "outdated replica does not count: a new one starts for demand",
        obs(replicas=(("old", R, 1, OLD),), in_flight=1, queued=1),
        2,
        (),
    ),
    (
        "outdated replica is drained once a new one is ready",
        obs(replicas=(("old", R, 1, OLD), ("new", R, 0)), in_flight=1),
        0,
        ("old",),
    ),
    (
        "outdated replica keeps serving while the new one starts",
        obs(replicas=(("old", R, 1, OLD), ("new", S, 0)), in_flight=1),
        0,
        (),
    ),
    (
        "min_replicas is met with current replicas only",
        obs(replicas=(("old", R, 0, OLD),), min_replicas=1),
        1,
        ("old",),
    ),
    (
        "a stopping replica is not capacity",
        obs(replicas=(("gone", ReplicaState.STOPPING, 0),), queued=1),
        1,
        (),
    ),
]


@pytest.mark.parametrize(
    ("observation", "starts", "drains"), [c[1:] for c in ROLLING], ids=[c[0] for c in ROLLING]
)
def test_rolling_replacement(
    observation: Observation, starts: int, drains: tuple[str, ...]
) -> None:
    decision = decide(observation)
    assert (decision.start, decision.drain, decision.stop) == (starts, drains, ())
    assert decision.noop or decision.reason


def test_a_specs_digest_follows_what_its_replicas_run() -> None:
    """Rolling replacement hangs on the digest: kept per spec, never stale after a copy."""
    spec = EndpointSpec(name="e", image_url="registry.test/a:1")
    digest = spec.replica_digest()
    assert spec.replica_digest() == digest
    assert spec.model_copy(update={"max_replicas": 9}).replica_digest() == digest
    newer = spec.model_copy(update={"image_url": "registry.test/a:2"})
    assert newer.replica_digest() != digest
    assert spec.model_copy(update={"image_url": "registry.test/a:1"}).replica_digest() == digest
    # Kept beside the fields, not among them.
    assert EndpointSpec.model_validate_json(spec.model_dump_json()) == spec


def test_backoff_reason_is_given() -> None:
    assert "held back" in decide(obs(queued=1, backoff=3)).reason


def test_noop_decision() -> None:
    assert Decision().noop and not Decision(start=1).noop


def agent(agent_id: str, slots: int, used: int) -> AgentRecord:
    return AgentRecord(agent_id=agent_id, slots=slots, used_slots=used)


@pytest.mark.parametrize(
    ("agents", "on", "pending", "expected"),
    [
        ([agent("a", 2, 0)], {}, {}, "a"),
        ([agent("a", 2, 2)], {}, {}, None),
        ([agent("a", 2, 1)], {}, {"a": 1}, None),
        (
            [agent("a", 8, 0), agent("b", 8, 0)],
            {"a": 1},
            {},
            "b",
        ),  # spread an endpoint across hosts
        ([agent("a", 8, 6), agent("b", 8, 1)], {}, {}, "b"),  # then prefer the most free slots
        ([agent("a", 8, 0), agent("b", 8, 0)], {}, {"a": 1}, "b"),  # pending starts count as placed
    ],
)
def test_place(
    agents: list[AgentRecord], on: dict[str, int], pending: dict[str, int], expected: str | None
) -> None:
    assert place(agents, Counter(on), Counter(pending)) == expected


def test_place_skips_excluded() -> None:
    assert place([agent("a", 2, 0)], Counter(), Counter(), exclude=frozenset({"a"})) is None


def test_timer_passes_skip_idle_endpoints_but_sweep_them() -> None:
    """With many idle endpoints, a tick looks at the busy ones and a slice of the idle ones;
    over IDLE_SWEEP seconds of ticks, every idle endpoint is looked at exactly once."""
    from scaler.loop import IDLE_SWEEP, Scaler
    from scaler.state import PendingStart, StartFailure
    from shared.messages import EndpointSpec, ReplicaRecord, ReplicaState
    from shared.settings import ScalerSettings

    scaler = Scaler(ScalerSettings(tick_interval=1.0), broker=None)  # type: ignore[arg-type]
    for i in range(200):
        scaler.endpoints.items[f"idle-{i}"] = EndpointSpec(name=f"idle-{i}")
    scaler.endpoints.items["kept-warm"] = EndpointSpec(name="kept-warm", min_replicas=1)
    scaler.endpoints.items["serving"] = EndpointSpec(name="serving")
    scaler.endpoints.items["starting"] = EndpointSpec(name="starting")
    scaler.endpoints.items["failing"] = EndpointSpec(name="failing")
    scaler.replicas.items["serving.r1"] = ReplicaRecord(
        endpoint="serving", replica_id="r1", agent_id="a", state=ReplicaState.READY, started_at=0
    )
    scaler.replicas.items["gone.r2"] = ReplicaRecord(
        endpoint="gone", replica_id="r2", agent_id="a", state=ReplicaState.READY, started_at=0
    )
    scaler.pending["p1"] = PendingStart("starting", "a", 0.0)
    scaler.of("failing").failure = StartFailure(1, 0.0, "boom", "d")
    always = {"kept-warm", "serving", "starting", "failing", "gone"}
    seen: Counter[str] = Counter()
    ticks = round(IDLE_SWEEP)
    for tick in range(ticks):
        chosen = scaler._tick_endpoints(tick)
        assert always <= chosen
        assert len(chosen - always) < 60  # a slice, not all 200
        seen.update(chosen - always)
    assert seen == Counter({f"idle-{i}": 1 for i in range(200)})


def test_an_endpoint_at_rest_waits_for_the_sweep_until_scale_to_zero_is_due() -> None:
    """One idle replica and nothing asked: the timer leaves the endpoint to the idle sweep
    until its scale_to_zero is due, then watches it every tick; traffic, or a second
    replica, brings it back at once. Heartbeats that change nothing wake nothing."""
    from scaler.loop import IDLE_SWEEP, Scaler
    from shared.settings import ScalerSettings

    clock = [NOW]
    scaler = Scaler(ScalerSettings(tick_interval=1.0), broker=None, clock=lambda: clock[0])  # type: ignore[arg-type]
    spec = EndpointSpec(name="warm", scale_to_zero=60)
    scaler.endpoints.items["warm"] = spec
    record = ReplicaRecord(
        endpoint="warm",
        replica_id="r1",
        agent_id="a",
        state=R,
        digest=spec.replica_digest(),
        started_at=0,
        ready_at=1.0,
        updated_at=NOW,
    )
    scaler.replicas.items["warm.r1"] = record
    scaler._replica_changed("warm.r1", record)
    assert scaler._dirty == {"warm"}
    scaler._dirty.clear()
    scaler._replica_changed("warm.r1", record.model_copy(update={"busy_s": 3.0}))
    assert not scaler._dirty  # a heartbeat

    def at_rest(last_activity: float, replicas: tuple[ReplicaView, ...]) -> None:
        view = Observation(
            spec=spec,
            queued=0,
            in_flight=0,
            replicas=replicas,
            pending_starts=0,
            last_activity=last_activity,
            now=clock[0],
        )
        scaler._rest("warm", view, decide(view))

    one = (ReplicaView("r1", R, 0, ready_at=1.0),)
    at_rest(NOW - 10, one)  # due at NOW + 50
    looked = [t for t in range(int(IDLE_SWEEP) * 4) if "warm" in scaler._tick_endpoints(t, NOW + t)]
    assert len(looked) == 4  # the sweep only
    assert "warm" in scaler._tick_endpoints(1, NOW + 50)  # due: every tick
    at_rest(NOW - 10, (*one, ReplicaView("r2", R, 0, ready_at=2.0)))  # two: one to shrink
    assert "warm" in scaler._tick_endpoints(1, NOW)


FOUR_IDLE = (("a", R, 0), ("b", R, 0), ("c", R, 0), ("d", R, 1))
KNOWN = {"service": 0.5, "cold": 5.0}  # a replica serves in 0.5 s and starts in 5 s


@pytest.mark.parametrize(
    ("label", "observation", "starts"),
    [
        # Nothing known yet (no request served, no replica started): one per request waiting.
        ("unknown: a replica per queued request", obs(queued=6), 4),
        # One busy replica clears 6 requests, and the few arriving, within a cold start:
        # none more is worth starting.
        (
            "a queue the replicas clear within a cold start",
            obs(replicas=(("a", R, 1),), in_flight=1, queued=6, rate=0.5, **KNOWN),
            0,
        ),
        # 40 queued need 4 replicas to clear them in 5 s, and 4 req/s need 2 more.
        (
            "a queue they cannot clear",
            obs(replicas=(("a", R, 1),), in_flight=1, queued=40, rate=4.0, max_replicas=8, **KNOWN),
            5,
        ),
        # A burst: 12 req/s of 0.5 s work is 6 replicas, and the one queued a 7th.
        (
            "the arrival rate alone",
            obs(replicas=(("a", R, 1),), in_flight=1, queued=1, rate=12.0, max_replicas=8, **KNOWN),
            6,
        ),
        ("the burst rule is clamped to max", obs(queued=100, rate=50.0, **KNOWN), 4),
        # The replicas average 0.5 s, but these requests take far longer: nothing has left
        # the queue for a cold start, so the estimates give way to one per request.
        (
            "a queue that does not move for a cold start",
            obs(replicas=(("a", R, 1),), in_flight=1, queued=3, rate=0.5, stalled=5.0, **KNOWN),
            3,
        ),
        (
            "a queue that moves",
            obs(replicas=(("a", R, 1),), in_flight=1, queued=3, rate=0.5, stalled=1.0, **KNOWN),
            0,
        ),
        ("from zero, known: one for one request", obs(queued=1, rate=0.01, **KNOWN), 1),
        # Scaled to zero after scale_to_zero (30 s) < the steady window: the last minute's
        # average still says 0.1 in flight, but nothing waits. No start (issue #17's flap).
        (
            "the steady rule starts nothing for no request",
            obs(busy=0.1, idle=31.0, rate=0.0, scale_to_zero=30, **KNOWN),
            0,
        ),
        ("nor before estimates exist", obs(busy=0.4, idle=5.0, scale_to_zero=30), 0),
        (
            "nor beside an idle replica",
            obs(replicas=(("a", R, 0),), busy=1.5, idle=5.0, **KNOWN),
            0,
        ),
        ("min_replicas still holds", obs(busy=0.1, idle=31.0, min_replicas=1), 1),
        (
            "concurrency divides the work",
            obs(queued=1, rate=11.0, concurrency_per_replica=3, **KNOWN),
            2,
        ),
        # The last minute kept 1.2 replicas busy: at 50 % that is 3.
        (
            "the steady load starts replicas ahead of a queue",
            obs(replicas=(("a", R, 1), ("b", R, 0)), in_flight=1, rate=2.0, busy=1.2, **KNOWN),
            1,
        ),
        (
            "a higher utilisation target needs fewer",
            obs(
                replicas=(("a", R, 1), ("b", R, 0)),
                in_flight=1,
                rate=2.0,
                busy=1.2,
                utilisation=0.6,
                **KNOWN,
            ),
            0,
        ),
    ],
)
def test_scale_up_rules(label: str, observation: Observation, starts: int) -> None:
    decision = decide(observation)
    assert (decision.start, decision.stop) == (starts, ()), (label, decision)
    assert decision.noop or decision.reason


@pytest.mark.parametrize(
    ("label", "observation", "stops"),
    [
        # Traffic goes on, but the last minute kept one replica busy: 2 at 50 %.
        ("the steady load needs fewer", obs(replicas=FOUR_IDLE, in_flight=1, busy=1.0), 2),
        ("it needs them all", obs(replicas=FOUR_IDLE, in_flight=1, busy=1.9), 0),
        ("not watched a window yet: keep them", obs(replicas=FOUR_IDLE, in_flight=1), 0),
        ("never below one this way", obs(replicas=FOUR_IDLE, in_flight=1, busy=0.0), 3),
        ("never below min_replicas", obs(replicas=FOUR_IDLE, busy=0.1, min_replicas=3), 1),
        (
            "busy replicas are never stopped",
            obs(replicas=(("a", R, 1), ("b", R, 1)), in_flight=2, busy=0.0),
            0,
        ),
        (
            "the burst rule keeps what it would start",
            obs(replicas=FOUR_IDLE, in_flight=1, busy=0.2, rate=8.0, **KNOWN),
            0,
        ),
        (
            "concurrency divides the load",
            obs(replicas=FOUR_IDLE, in_flight=1, busy=2.0, concurrency_per_replica=2),
            2,
        ),
        # Two ready are what the load needs; a third starts for a flurry: none stops until
        # it is ready (stopping a ready one would leave one to serve for a cold start).
        (
            "a starting replica is no reason to stop a ready one",
            obs(replicas=(("a", R, 1), ("b", R, 0), ("c", S, 0)), in_flight=1, busy=0.9),
            0,
        ),
        (
            "once it is ready, the surplus goes",
            obs(replicas=(("a", R, 1), ("b", R, 0), ("c", R, 0)), in_flight=1, busy=0.9),
            1,
        ),
    ],
)
def test_scale_down_to_the_steady_load(label: str, observation: Observation, stops: int) -> None:
    decision = decide(observation)
    assert decision.start == 0, label
    assert len(decision.stop) == stops, (label, decision)
    assert "d" not in decision.stop  # the busy one


def _record(rid: str, busy_s: float) -> ReplicaRecord:
    return ReplicaRecord(
        endpoint="ep", replica_id=rid, agent_id="a", state=R, started_at=0.0, busy_s=busy_s
    )


def _bl(arrived: int, queued: int = 0) -> Backlog:
    return Backlog(queued=queued, in_flight=0, delivered=arrived - queued)


def test_a_stalled_queue_is_timed_from_its_last_move() -> None:
    from scaler.traffic import Traffic

    traffic = Traffic()
    traffic.add(0.0, _bl(5), [])
    traffic.add(1.0, _bl(8, queued=2), [])  # 6 delivered: it moved
    traffic.add(4.0, _bl(9, queued=3), [])  # still 6 delivered
    assert traffic.stalled(4.0) == 3.0
    traffic.add(5.0, _bl(9, queued=2), [])  # one more delivered
    assert traffic.stalled(5.0) == 0.0
    traffic.add(6.0, _bl(9), [])  # the queue empty: nothing is stalled
    assert traffic.stalled(6.0) == 0.0
    traffic.add(8.0, _bl(10, queued=1), [])  # a request waits: timed from the empty queue
    assert traffic.stalled(8.0) == 2.0


def test_traffic_rates_and_load_over_their_windows() -> None:
    """Arrivals per second from the running count, load from the replicas' busy seconds;
    nothing until a window has been watched; a replica's busy time counts from when it
    is first seen, and one that goes takes nothing back."""
    from scaler.policy import BURST_WINDOW, STABLE_WINDOW
    from scaler.traffic import Traffic

    traffic = Traffic()
    traffic.add(0.0, _bl(0), [])
    assert traffic.rate(BURST_WINDOW) is None and traffic.busy(STABLE_WINDOW) is None
    # Two requests a second; two replicas, each busy half of every second.
    for t in range(1, 61):
        traffic.add(float(t), _bl(2 * t), [_record("r1", 100 + t / 2), _record("r2", t / 2)])
    assert traffic.rate(BURST_WINDOW) == pytest.approx(2.0)
    assert traffic.rate(STABLE_WINDOW) == pytest.approx(2.0)
    assert traffic.busy(STABLE_WINDOW) == pytest.approx(59 / 60)  # r1's first 100.5 s: before
    # r2 stops; r1 goes on alone, busy all the time, and arrivals quicken.
    for t in range(61, 121):
        traffic.add(float(t), _bl(120 + 5 * (t - 60)), [_record("r1", 130 + (t - 60))])
    assert traffic.busy(STABLE_WINDOW) == pytest.approx(1.0)
    assert traffic.rate(BURST_WINDOW) == pytest.approx(5.0)
    # The endpoint's queue was re-created: its count starts again from zero.
    traffic.add(121.0, _bl(3), [])
    assert traffic.rate(BURST_WINDOW) is None
    # A replica whose agent does not count busy time: no load is claimed for a window.
    older = ReplicaRecord(endpoint="ep", replica_id="old", agent_id="b", state=R, started_at=0.0)
    for t in range(122, 200):
        traffic.add(float(t), _bl(3 + t), [_record("r1", t), older])
    assert traffic.busy(STABLE_WINDOW) is None
    for t in range(200, 262):
        traffic.add(float(t), _bl(3 + t), [_record("r1", t)])
    assert traffic.busy(STABLE_WINDOW) == pytest.approx(1.0)
