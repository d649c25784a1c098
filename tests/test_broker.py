"""The NATS layout and data path against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from nats.js.api import DiscardPolicy

from berth.local import LocalNats
from broker.bodies import ensure_bodies
from broker.connection import Broker, connect
from broker.envelope import Reply, RequestEnvelope
from broker.events import publish_event, read_events
from broker.jetstream import WrongLastRevision, attempt, backlog, kv_read, kv_write, queued_at
from broker.jobs import apply, create_job, ensure_results, get_job, recent_jobs
from broker.publish import NUDGE_EVERY, Requester
from broker.pull import Holdings, Puller, fail_queued
from broker.streams import (
    MAX_DELIVER,
    MAX_ENDPOINTS,
    delete_endpoint_consumer,
    ensure_endpoint_consumer,
    ensure_layout,
    pin_queue_tail,
    until_answered,
)
from shared import names
from shared.errors import BrokerUnavailable, TooManyEndpoints
from shared.lifecycle import Answered, CallbackTried, Cancelled, Refusal
from shared.messages import CallbackAttempt, CallbackLog, EndpointSpec, JobRecord


@contextlib.asynccontextmanager
async def laid_out(url: str) -> AsyncIterator[Broker]:
    b = await connect(url, "test")
    try:
        await ensure_layout(b)
        yield b
    finally:
        await b.close()


def spec(**kw: object) -> EndpointSpec:
    return EndpointSpec(name=f"ep-{secrets.token_hex(3)}", **kw)  # type: ignore[arg-type]


def envelope(requester: Requester, rid: str) -> RequestEnvelope:
    return RequestEnvelope(
        request_id=rid, method="POST", path="/infer", reply_to=requester.reply_subject(rid)
    )


async def test_not_yet_is_tried_again_until_the_limit() -> None:
    """A replicated stream electing its leader answers "not yet" (503, no responders): a
    read is tried again meanwhile, and past the limit it is BrokerUnavailable, named."""
    from nats.js.errors import ServiceUnavailableError

    tries: list[float] = []

    async def elect_then_answer() -> str:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise ServiceUnavailableError()
        return "read"

    assert await until_answered(elect_then_answer, "a read", limit=5) == "read"
    assert len(tries) == 3

    async def never() -> str:
        raise ServiceUnavailableError()

    began = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="JetStream did not answer a read of x"):
        await until_answered(never, "a read of x", limit=0.5)
    assert time.monotonic() - began < 2

    async def other() -> str:
        raise ValueError("not a 'not yet'")

    with pytest.raises(ValueError, match="not a"):  # anything else is not tried again
        await until_answered(other, "a read", limit=5)


async def test_layout_is_idempotent(broker: Broker) -> None:
    await ensure_layout(broker)
    info = await broker.js.stream_info(names.REQUESTS_STREAM)
    assert str(getattr(info.config.retention, "value", info.config.retention)) == "workqueue"
    assert info.config.duplicate_window == 120.0


async def test_more_than_a_thousand_endpoints_have_a_queue(broker: Broker) -> None:
    """nats-server caps a stream at 1,000 consumers unless the stream says otherwise:
    the requests stream does, so endpoint 1,001 gets its consumer."""
    info = await broker.js.stream_info(names.REQUESTS_STREAM)
    assert info.config.max_consumers == MAX_ENDPOINTS
    made = [spec() for _ in range(1001 - info.state.consumer_count)]
    try:
        # 50 at a time: a thousand JetStream API calls at once can outlast the client's
        # timeout on a busy machine, which is not what this test is about.
        for i in range(0, len(made), 50):
            await asyncio.gather(*(ensure_endpoint_consumer(broker, s) for s in made[i : i + 50]))
        info = await broker.js.stream_info(names.REQUESTS_STREAM)
        assert info.state.consumer_count >= 1001
    finally:
        for s in made:
            await broker.js.delete_consumer(names.REQUESTS_STREAM, names.consumer_name(s.name))


async def test_a_full_requests_stream_is_a_clear_error(broker: Broker) -> None:
    info = await broker.js.stream_info(names.REQUESTS_STREAM)
    full = dataclasses.replace(info.config, max_consumers=max(1, info.state.consumer_count))
    await broker.js.update_stream(full)
    try:
        if info.state.consumer_count == 0:
            await ensure_endpoint_consumer(broker, first := spec())
        with pytest.raises(TooManyEndpoints, match="at most"):
            await ensure_endpoint_consumer(broker, spec())
    finally:
        await ensure_layout(broker)  # the limit back
        if info.state.consumer_count == 0:
            await delete_endpoint_consumer(broker, first.name)


async def test_consumer_limits_follow_the_spec(broker: Broker) -> None:
    s = spec(max_replicas=2, concurrency_per_replica=3)
    await ensure_endpoint_consumer(broker, s)
    info = await broker.js.consumer_info(names.REQUESTS_STREAM, names.consumer_name(s.name))
    assert info.config.max_ack_pending == 6
    assert info.config.max_deliver == MAX_DELIVER
    await ensure_endpoint_consumer(
        broker, s.model_copy(update={"max_replicas": 5})
    )  # an update, not an error
    info = await broker.js.consumer_info(names.REQUESTS_STREAM, names.consumer_name(s.name))
    assert info.config.max_ack_pending == 15
    await delete_endpoint_consumer(broker, s.name)
    assert await backlog(broker, s.name) is None


async def test_publish_pull_reply_round_trip(broker: Broker) -> None:
    s = spec()
    await ensure_endpoint_consumer(broker, s)
    requester = Requester(broker)
    await requester.start()
    waiters = []
    for i in range(3):
        rid = f"r{i}"
        waiters.append(requester.expect(rid))
        await requester.publish(s.name, envelope(requester, rid), f"body-{i}".encode())
    # A duplicate publish (same request id) is dropped by JetStream's duplicate window.
    await requester.publish(s.name, envelope(requester, "r0"), b"dup")
    assert await backlog(broker, s.name) == type(await backlog(broker, s.name))(
        queued=3, in_flight=0
    )  # type: ignore[misc]

    puller = Puller(broker, s.name)
    await puller.open()
    seen = []
    for _ in range(3):
        d = await puller.next(2.0)
        assert d is not None
        seen.append(d.body)
        await puller.reply(d, Reply(status=200, body=d.body.upper(), replica_id="x"))
    await puller.close()
    assert seen == [b"body-0", b"body-1", b"body-2"]  # FIFO
    replies = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert [r.body for r in replies] == [b"BODY-0", b"BODY-1", b"BODY-2"]
    assert (await backlog(broker, s.name)).queued == 0  # type: ignore[union-attr]


async def until(done: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def requester_for(b: Broker, s: EndpointSpec) -> Requester:
    await ensure_endpoint_consumer(b, s)
    requester = Requester(b)
    await requester.start()
    return requester


async def test_a_queue_that_drains_after_each_request_keeps_its_block_file(
    own_nats: LocalNats, own_broker: Broker
) -> None:
    """nats-server replaces an emptied last block with a new file; the tail pin prevents it."""
    b, s = own_broker, spec()
    requester = await requester_for(b, s)
    puller = Puller(b, s.name)
    await puller.open()
    stream_dir = own_nats.store_dir / "jetstream" / "$G" / "streams" / names.REQUESTS_STREAM
    blocks: set[str] = set()

    async def stored() -> int:
        return int((await b.js.stream_info(names.REQUESTS_STREAM)).state.messages)

    async def pinned() -> bool:
        return await stored() >= 2

    async def acked() -> bool:
        now = await backlog(b, s.name)
        return now is not None and (now.queued, now.in_flight) == (0, 0)

    for i in range(10):
        rid = f"t{i}"
        waiter = requester.expect(rid)
        await requester.publish(s.name, envelope(requester, rid), b"{}")
        if i == 0:  # the first publish pins the tail, in the background
            await until(pinned)
        delivery = await puller.next(2.0)
        assert delivery is not None
        await puller.reply(delivery, Reply(status=200, body=b"ok"))
        await asyncio.wait_for(waiter, 5)
        await until(acked)  # the ack has removed the request
        blocks |= {p.name for p in (stream_dir / "msgs").glob("*.blk")}
    assert len(blocks) == 1, blocks
    # However often it is renewed, the pin is one message, and it is all that is left.
    for _ in range(3):
        await pin_queue_tail(b)
    assert await stored() == 1
    await puller.close()


async def test_a_slot_makes_no_pulls_while_nats_is_away(
    own_nats: LocalNats, own_broker: Broker
) -> None:
    """Pulls made in an outage would reach the server together once it is back, each able
    to hand the slot a request it no longer waits for; so none are made, and the slot
    pulls again once the connection is back."""
    b, s = own_broker, spec()
    requester = await requester_for(b, s)
    puller = Puller(b, s.name)
    await puller.open()
    wire = await b.wire()
    rounds = 0

    async def slot() -> None:
        nonlocal rounds
        while True:
            delivery = await puller.next(0.2)
            rounds += 1
            if delivery is not None:
                await puller.reply(delivery, Reply(status=200, body=b"ok"))

    task = asyncio.create_task(slot())
    try:
        assert own_nats.proc is not None
        own_nats.proc.kill()
        own_nats.proc.wait(10)

        async def went_round(times: int) -> bool:
            return not wire.is_connected and rounds >= times

        await until(lambda: went_round(0))
        start = rounds
        await until(lambda: went_round(start + 4), timeout=10)
        assert not any(b"MSG.NEXT" in part for part in wire._out), "pulls were held for later"

        own_nats.start()
        await until(lambda: asyncio.sleep(0, wire.is_connected))
        await until(lambda: asyncio.sleep(0, b.nc.is_connected), timeout=10)
        waiter = requester.expect("after")
        await requester.publish(s.name, envelope(requester, "after"), b"x")
        assert (await asyncio.wait_for(waiter, 10)).body == b"ok"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await puller.close()


async def test_a_request_the_queue_cannot_take_is_a_clear_error(own_broker: Broker) -> None:
    """JetStream's refusal (a full stream) and its absence (no stream) are told, not waited out."""
    b, s = own_broker, spec()
    requester = await requester_for(b, s)
    info = await b.js.stream_info(names.REQUESTS_STREAM)
    full = dataclasses.replace(
        info.config, max_msgs=info.state.messages + 1, discard=DiscardPolicy.NEW
    )
    await b.js.update_stream(full)
    assert await requester.publish(s.name, envelope(requester, "fits"), b"{}") > 0
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="refused"):
        await requester.publish(s.name, envelope(requester, "over"), b"{}")
    await b.js.delete_stream(names.REQUESTS_STREAM)
    with pytest.raises(BrokerUnavailable, match="503"):
        await requester.publish(s.name, envelope(requester, "nowhere"), b"{}")
    assert time.monotonic() - started < b.timeout  # answered, not timed out


async def test_nak_redelivers_and_attempts_are_counted(broker: Broker) -> None:
    s = spec()
    await ensure_endpoint_consumer(broker, s)
    requester = Requester(broker)
    await requester.start()
    await requester.publish(s.name, envelope(requester, "n1"), b"x")
    puller = Puller(broker, s.name)
    await puller.open()
    first = await puller.next(2.0)
    assert first is not None and first.attempt == 1
    await puller.retry(first)
    second = await puller.next(2.0)
    assert second is not None and second.attempt == 2 and second.body == b"x"
    await puller.reply(second, Reply(status=200, body=b""))
    assert await puller.next(0.2) is None
    await puller.close()


async def test_fail_queued_answers_every_waiting_request(broker: Broker) -> None:
    s = spec()
    await ensure_endpoint_consumer(broker, s)
    requester = Requester(broker)
    await requester.start()
    waiters = [requester.expect(f"f{i}") for i in range(4)]
    for i in range(4):
        await requester.publish(s.name, envelope(requester, f"f{i}"), b"")
    failed = await fail_queued(
        broker, s.name, Reply.failure(503, "replica_failed", "no GPU"), before=time.time()
    )
    assert failed == 4
    replies = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert {(r.status, r.error) for r in replies} == {(503, "replica_failed")}
    assert (await backlog(broker, s.name)).queued == 0  # type: ignore[union-attr]


async def test_fail_queued_leaves_later_requests(broker: Broker) -> None:
    s = spec()
    await ensure_endpoint_consumer(broker, s)
    requester = Requester(broker)
    await requester.start()
    early = requester.expect("early")
    await requester.publish(s.name, envelope(requester, "early"), b"")
    cutoff = time.time()
    await asyncio.sleep(0.01)  # JetStream's timestamps must fall on either side of the cutoff
    await requester.publish(s.name, envelope(requester, "late"), b"")
    assert (
        await fail_queued(broker, s.name, Reply.failure(503, "replica_failed", "x"), before=cutoff)
        == 1
    )
    assert (await asyncio.wait_for(early, 5)).status == 503
    # The late one was handed back untouched: the next pull gets it.
    puller = Puller(broker, s.name)
    await puller.open()
    again = await puller.next(2.0)
    assert again is not None and again.envelope.request_id == "late"
    await puller.close()


async def test_unreachable_nats_is_a_clear_error() -> None:
    with pytest.raises(BrokerUnavailable, match="cannot connect to NATS"):
        await connect("nats://127.0.0.1:1", "test", timeout=0.5)


async def test_read_events_is_complete_every_time(broker: Broker) -> None:
    """Regression: a push consumer's pending count read 0 once the server had pushed everything."""
    endpoint = f"ev-{secrets.token_hex(3)}"
    assert await read_events(broker, endpoint) == []  # none yet: no waiting on a timeout
    for i in range(20):
        await publish_event(broker, "scale", endpoint, f"e{i}")
    await broker.nc.flush()
    async with asyncio.timeout(5):  # stored by the events stream
        while len(await read_events(broker, endpoint)) < 20:
            await asyncio.sleep(0.01)
    for _ in range(10):
        events = await read_events(broker, endpoint, max_lines=5)
        assert [e["event"]["type"] for e in events] == [f"e{i}" for i in range(15, 20)]


async def test_pull_from_a_deleted_consumer_is_no_crash(broker: Broker) -> None:
    """An endpoint deleted under a waiting replica: its pull ends quietly, not with an exception."""
    s = spec()
    await ensure_endpoint_consumer(broker, s)
    puller = Puller(broker, s.name)
    await puller.open()
    waiting = asyncio.create_task(puller.next(2.0))
    await asyncio.sleep(0.1)  # let the pull request reach the server before the delete
    await delete_endpoint_consumer(broker, s.name)
    assert await asyncio.wait_for(waiting, 5) is None
    assert await puller.next(0.2) is None  # and stays quiet while the consumer is gone
    await puller.close()


async def test_demand_nudges_are_one_per_window_and_the_last_request_is_seen(
    broker: Broker,
) -> None:
    s = spec()
    await ensure_endpoint_consumer(broker, s)
    seen: list[tuple[float, bytes]] = []

    async def on_nudge(msg: Any) -> None:
        seen.append((time.monotonic(), msg.data))

    async def until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 5
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    sub = await broker.nc.subscribe(names.demand_subject(s.name), cb=on_nudge)
    requester = Requester(broker)
    await requester.start()
    started = time.monotonic()
    for i in range(200):  # a burst: many requests within a few windows
        await requester.publish(s.name, envelope(requester, f"n{i}"), b"{}", "d1")
    last_publish = time.monotonic()
    # The trailing nudge follows the burst's last request within one window.
    await until(lambda: bool(seen) and seen[-1][0] >= last_publish)
    windows = (last_publish - started) / NUDGE_EVERY
    assert seen and seen[0][0] - started < 0.25  # the first request wakes the scaler
    assert seen[-1][0] >= last_publish
    assert len(seen) <= 2 * windows + 2 < 200  # a leading and a trailing one per window at most
    # A changed config is told, whatever the window.
    await requester.publish(s.name, envelope(requester, "changed"), b"{}", "d2")
    await until(lambda: any(data == b"d2" for _, data in seen))
    await sub.unsubscribe()
    assert any(data == b"d2" for _, data in seen)


async def test_a_claim_checked_body_that_is_gone_is_answered_not_looped(broker: Broker) -> None:
    await ensure_bodies(broker, 60)
    s = spec()
    await ensure_endpoint_consumer(broker, s)
    requester = Requester(broker)
    await requester.start()
    env = envelope(requester, "lost")
    env.body_ref = "req-not-in-the-store"
    waiter = requester.expect("lost")
    await broker.js.publish(names.request_subject(s.name), b"", headers=env.to_headers())
    puller = Puller(broker, s.name)
    await puller.open()
    try:
        assert await puller.next(2) is None
        reply = await asyncio.wait_for(waiter, 5)
        assert await puller.next(0.2) is None  # answered and acked: not delivered again
    finally:
        await puller.close()
    assert reply.status == 502 and reply.error == "body_lost"


def test_a_deliverys_attempt_and_queue_time_are_read_from_its_ack_subject() -> None:
    """Both forms JetStream uses: without, and with a domain and an account hash."""
    v1 = "$JS.ACK.BERTH_REQUESTS.ep-x.3.41.40.1764288000123456789.7"
    v2 = "$JS.ACK.hub.ACCHASH.BERTH_REQUESTS.ep-x.2.41.40.1764288000123456789.7.rnd"
    assert (attempt(v1), attempt(v2)) == (3, 2)
    assert queued_at(v1) == queued_at(v2) == pytest.approx(1764288000.123456789)
    with pytest.raises(ValueError, match="not a JetStream delivery"):
        attempt("_INBOX.abc")


async def test_kv_reads_and_writes_and_concurrent_changes_all_land(broker: Broker) -> None:
    await ensure_results(broker, 3600)
    key = f"kv-{secrets.token_hex(4)}"
    first = await kv_write(broker, names.KV_JOBS, key, b"one", last=0)
    with pytest.raises(WrongLastRevision):
        await kv_write(broker, names.KV_JOBS, key, b"again", last=0)  # it exists now
    second = await kv_write(broker, names.KV_JOBS, key, b"two", last=first)
    with pytest.raises(WrongLastRevision):
        await kv_write(broker, names.KV_JOBS, key, b"stale", last=first)
    assert await kv_read(broker, names.KV_JOBS, key) == (b"two", second)
    assert await kv_read(broker, names.KV_JOBS, f"{key}-none") is None
    await (await broker.kv(names.KV_JOBS)).delete(key)
    assert await kv_read(broker, names.KV_JOBS, key) is None  # a delete marker is no value


async def test_job_writers_racing_are_judged_by_the_lifecycle_one_at_a_time(
    own_broker: Broker,
) -> None:
    """Concurrent events on one job: each is applied by compare-and-set, none is lost,
    and of two that end it exactly one wins. On a nats-server of its own: the session's
    Berth would try the job's callback itself and add an attempt."""
    broker = own_broker
    await ensure_results(broker, 3600)
    now = time.time()
    for _ in range(3):
        job = JobRecord(response_id=f"job-{secrets.token_hex(4)}", endpoint="e", created_at=now)
        await create_job(broker, job)
        cancel, answer = await asyncio.gather(
            apply(broker, job.response_id, Cancelled(at=now)),
            apply(broker, job.response_id, Answered(at=now, replica_id="r")),
        )
        won = [r for r in (cancel, answer) if isinstance(r, JobRecord)]
        lost = [r for r in (cancel, answer) if isinstance(r, Refusal)]
        assert len(won) == 1 and len(lost) == 1, (cancel, answer)
        stored = await get_job(broker, job.response_id)
        assert stored is not None and stored.status is won[0].status

    job = JobRecord(
        response_id=f"job-{secrets.token_hex(4)}",
        endpoint="e",
        created_at=now,
        callback=CallbackLog(url="http://127.0.0.1:9/cb"),
    )
    revision = await create_job(broker, job)
    assert isinstance(await apply(broker, job.response_id, Answered(at=now)), JobRecord)
    tries = [
        CallbackTried(attempt=CallbackAttempt(at=now + i, status=500), delivered=False)
        for i in range(10)
    ]
    await asyncio.gather(*(apply(broker, job.response_id, t) for t in tries))
    stored = await get_job(broker, job.response_id)
    assert stored is not None and stored.callback is not None
    assert stored.callback.attempts == 10 and len(stored.callback.log) == 10
    assert revision < (await (await broker.kv(names.KV_JOBS)).get(job.response_id)).revision
    assert await apply(broker, "no-such-job", Cancelled(at=now)) is None


async def test_the_job_listing_leaves_out_a_record_it_cannot_read(own_broker: Broker) -> None:
    """A record that is no job (or of a newer format) does not fail the listing of the rest."""
    await ensure_results(own_broker, 3600)
    job = JobRecord(response_id=f"job-{secrets.token_hex(4)}", endpoint="e", created_at=time.time())
    await create_job(own_broker, job)
    await kv_write(own_broker, names.KV_JOBS, "job-garbled", b"not a job", last=0)
    newer = job.model_copy(update={"response_id": "job-newer"}).model_dump(mode="json")
    newer["v"] = 99
    await kv_write(own_broker, names.KV_JOBS, "job-newer", orjson.dumps(newer), last=0)
    assert [j.response_id for j in await recent_jobs(own_broker, 100)] == [job.response_id]
    # Read alone, such a record is an outage with its reason (a 503), never a crash.
    with pytest.raises(BrokerUnavailable, match="cannot be read by this Berth"):
        await get_job(own_broker, "job-newer")


async def test_a_request_delivered_again_runs_only_where_no_live_agent_holds_it(
    own_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    s = spec()
    await ensure_endpoint_consumer(own_broker, s, ack_wait=1.0)
    requester = Requester(own_broker)
    await requester.start()

    async def two() -> int:
        return 2

    a, b = Holdings(two, wait=5.0), Holdings(two, wait=5.0)
    await a.open(own_broker)
    await b.open(own_broker)
    pa, pb = Puller(own_broker, s.name, a), Puller(own_broker, s.name, b)
    await pa.open()
    await pb.open()

    answer = requester.expect("h1")
    await requester.publish(s.name, envelope(requester, "h1"), b"x")
    first = await pa.next(2.0)
    assert first is not None and first.attempt == 1 and a.ids == {"h1"}
    # No in-progress acks from a (stalled): delivered again after ack_wait, to b, which
    # hears that a still holds it and leaves it.
    with caplog.at_level("WARNING", logger="broker.pull"):
        assert await pb.next(2.0) is None
    assert "request h1 delivered again (attempt 2)" in caplog.text and not b.ids
    await pa.reply(first, Reply(status=200, body=b"once"))
    assert (await answer).body == b"once" and not a.ids
    assert await pb.next(1.5) is None  # acked by its holder: never delivered again

    # Its holder is gone (a closed: a dead agent still counted in the fleet): b waits
    # `wait` for an answer that never comes, then runs it.
    await requester.publish(s.name, envelope(requester, "h2"), b"y")
    gone = await pa.next(2.0)
    assert gone is not None
    taken = time.monotonic()
    a.close()
    b._wait = 0.5
    again = await pb.next(3.0)
    assert again is not None and again.attempt == 2 and b.ids == {"h2"}
    assert time.monotonic() - taken > 1.0 + 0.4  # ack_wait, then the wait for answers
    await pb.retry(again)  # handed back: b no longer holds it
    assert not b.ids

    # Every agent of the fleet (here b alone) answered "free": no wait at all.
    async def one() -> int:
        return 1

    b._fleet_size = one
    b._wait = 30.0
    started = time.monotonic()
    again = await pb.next(2.0)
    assert again is not None and again.attempt == 3
    assert time.monotonic() - started < 1.0
    await pb.reply(again, Reply(status=200, body=b""))
    for p in (pa, pb):
        await p.close()
    b.close()
