"""One contract for the queue's and the job store's JetStream operations, held by two paths:
Berth's hand-spoken one (``broker/jetstream.py`` and the Puller, on the lean wire) and
nats-py's, the reference client. Whatever the hand-spoken path answers, nats-py must
answer the same, so the fast path cannot quietly diverge.

The job store keeps its records with ``kv_read`` and ``kv_write`` only, and the queue
moves with ``js_publish``, ``backlog`` and the pull; each is held to the contract here.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as JsTimeout
from nats.js.errors import BadRequestError, KeyDeletedError, KeyNotFoundError, NotFoundError

from broker import jetstream
from broker.connection import Broker
from broker.envelope import RequestEnvelope
from broker.jetstream import Backlog, ErrorCode, WrongLastRevision
from broker.jobs import ensure_results
from broker.pull import Delivery, Puller
from broker.streams import ensure_endpoint_consumer
from shared import names
from shared.messages import EndpointSpec


@dataclass
class Pulled:
    data: bytes
    request_id: str
    attempt: int
    queued_at: float
    handle: object  # the path's own: a Delivery, or a nats-py message


class JetStreamPath(Protocol):
    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int: ...
    async def kv_read(self, bucket: str, key: str) -> tuple[bytes, int] | None: ...
    async def kv_write(self, bucket: str, key: str, value: bytes, last: int) -> int: ...
    async def kv_delete(self, bucket: str, key: str) -> None: ...
    async def backlog(self, endpoint: str) -> Backlog | None: ...
    async def pull(self, endpoint: str, expires: float) -> Pulled | None: ...
    async def ack(self, pulled: Pulled) -> None: ...
    async def nak(self, pulled: Pulled) -> None: ...
    async def close(self) -> None: ...


class HandSpoken:
    """Berth's own path, as the API and agents use it."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self._pullers: dict[str, Puller] = {}

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        return await jetstream.js_publish(self.broker, subject, payload, headers)

    async def kv_read(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        return await jetstream.kv_read(self.broker, bucket, key)

    async def kv_write(self, bucket: str, key: str, value: bytes, last: int) -> int:
        return await jetstream.kv_write(self.broker, bucket, key, value, last)

    async def kv_delete(self, bucket: str, key: str) -> None:
        await (await self.broker.kv(bucket)).delete(key)

    async def backlog(self, endpoint: str) -> Backlog | None:
        return await jetstream.backlog(self.broker, endpoint)

    async def pull(self, endpoint: str, expires: float) -> Pulled | None:
        puller = self._pullers.get(endpoint)
        if puller is None:
            puller = self._pullers[endpoint] = Puller(self.broker, endpoint)
            await puller.open()
        d = await puller.next(expires)
        if d is None:
            return None
        return Pulled(d.body, d.envelope.request_id, d.attempt, d.queued_at, (puller, d))

    async def ack(self, pulled: Pulled) -> None:
        puller, delivery = pulled.handle  # type: ignore[misc]
        assert isinstance(puller, Puller) and isinstance(delivery, Delivery)
        await puller.discard(delivery)
        puller.wire.flush()

    async def nak(self, pulled: Pulled) -> None:
        puller, delivery = pulled.handle  # type: ignore[misc]
        assert isinstance(puller, Puller) and isinstance(delivery, Delivery)
        await puller.retry(delivery)
        puller.wire.flush()

    async def close(self) -> None:
        for puller in self._pullers.values():
            await puller.close()


class NatsPy:
    """The reference: the same operations through nats-py's JetStream client."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self._subs: dict[str, object] = {}

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        try:
            ack = await self.broker.js.publish(subject, payload, headers=headers)
        except BadRequestError as exc:
            if exc.err_code in (
                ErrorCode.WRONG_LAST_SEQUENCE,
                ErrorCode.WRONG_LAST_SUBJECT_SEQUENCE,
            ):
                raise WrongLastRevision(exc.description or "") from exc
            raise
        return ack.seq

    async def kv_read(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        kv = await self.broker.kv(bucket)
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return entry.value or b"", entry.revision or 0

    async def kv_write(self, bucket: str, key: str, value: bytes, last: int) -> int:
        kv = await self.broker.kv(bucket)
        try:
            if last == 0:
                return await kv.create(key, value)
            return await kv.update(key, value, last=last)
        except BadRequestError as exc:  # nats-py 2.x: the wrong-last-sequence error
            raise WrongLastRevision(exc.description or "") from exc
        except Exception as exc:
            if type(exc).__name__ == "KeyWrongLastSequenceError":
                raise WrongLastRevision(str(exc)) from exc
            raise

    async def kv_delete(self, bucket: str, key: str) -> None:
        await (await self.broker.kv(bucket)).delete(key)

    async def backlog(self, endpoint: str) -> Backlog | None:
        try:
            info = await self.broker.js.consumer_info(
                names.REQUESTS_STREAM, names.consumer_name(endpoint)
            )
        except NotFoundError:
            return None
        return Backlog(
            queued=info.num_pending or 0,
            in_flight=info.num_ack_pending or 0,
            delivered=info.delivered.consumer_seq if info.delivered else 0,
        )

    async def pull(self, endpoint: str, expires: float) -> Pulled | None:
        sub = self._subs.get(endpoint)
        if sub is None:
            sub = self._subs[endpoint] = await self.broker.js.pull_subscribe_bind(
                durable=names.consumer_name(endpoint), stream=names.REQUESTS_STREAM
            )
        try:
            msgs: list[Msg] = await sub.fetch(1, timeout=expires)  # type: ignore[attr-defined]
        except (TimeoutError, JsTimeout):
            return None
        msg = msgs[0]
        meta = msg.metadata
        envelope = RequestEnvelope.from_headers(msg.headers or {})
        stored = meta.timestamp.timestamp()
        return Pulled(msg.data, envelope.request_id, meta.num_delivered, stored, msg)

    async def ack(self, pulled: Pulled) -> None:
        assert isinstance(pulled.handle, Msg)
        await pulled.handle.ack_sync()

    async def nak(self, pulled: Pulled) -> None:
        assert isinstance(pulled.handle, Msg)
        await pulled.handle.nak()
        await self.broker.nc.flush()

    async def close(self) -> None:
        for sub in self._subs.values():
            await sub.unsubscribe()  # type: ignore[attr-defined]


@pytest.fixture
def broker(own_broker: Broker) -> Broker:
    """Its own nats-server: the keys these tests write in the jobs bucket are no jobs, and
    the session's Berth lists that bucket."""
    return own_broker


@pytest.fixture(params=["hand-spoken", "nats-py"])
async def path(request: pytest.FixtureRequest, broker: Broker) -> AsyncIterator[JetStreamPath]:
    await ensure_results(broker, 3600)
    chosen: JetStreamPath = HandSpoken(broker) if request.param == "hand-spoken" else NatsPy(broker)
    try:
        yield chosen
    finally:
        await chosen.close()


async def endpoint(broker: Broker, ack_wait: float = 30.0) -> str:
    spec = EndpointSpec(name=f"ct-{secrets.token_hex(3)}")
    await ensure_endpoint_consumer(broker, spec, ack_wait=ack_wait)
    return spec.name


def request(request_id: str) -> dict[str, str]:
    """A request's headers; its id (also its Nats-Msg-Id, deduplicated stream-wide) is
    made unique by a suffix."""
    unique = f"{request_id}-{secrets.token_hex(4)}"
    return RequestEnvelope(request_id=unique, method="POST", path="/infer").to_headers()


async def until_backlog(path: JetStreamPath, name: str, want: Backlog) -> Backlog | None:
    """The backlog once it is ``want`` (an ack on the hand-spoken path is not confirmed:
    JetStream applies it a moment later), or what it was after a bounded wait."""
    deadline = time.monotonic() + 5.0
    while True:
        found = await path.backlog(name)
        if found == want or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


async def test_a_publish_is_acked_with_its_sequence_and_deduplicated_by_id(
    path: JetStreamPath, broker: Broker
) -> None:
    name = await endpoint(broker)
    subject = names.request_subject(name)
    r1, r2 = request("r1"), request("r2")
    first = await path.publish(subject, b"a", r1)
    second = await path.publish(subject, b"b", r2)
    assert second > first > 0
    assert await path.publish(subject, b"a", r1) == first  # the same Nats-Msg-Id
    backlog = await path.backlog(name)
    assert backlog is not None and backlog.queued == 2  # the duplicate was not stored


async def test_kv_compare_and_set(path: JetStreamPath) -> None:
    bucket, key = names.KV_JOBS, f"ct-{secrets.token_hex(4)}"
    assert await path.kv_read(bucket, key) is None  # never written
    one = await path.kv_write(bucket, key, b"one", last=0)
    assert await path.kv_read(bucket, key) == (b"one", one)
    with pytest.raises(WrongLastRevision):
        await path.kv_write(bucket, key, b"again", last=0)  # it exists
    two = await path.kv_write(bucket, key, b"two", last=one)
    assert two > one
    with pytest.raises(WrongLastRevision):
        await path.kv_write(bucket, key, b"stale", last=one)
    assert await path.kv_read(bucket, key) == (b"two", two)
    await path.kv_delete(bucket, key)
    assert await path.kv_read(bucket, key) is None  # a delete marker is no value
    three = await path.kv_write(bucket, key, b"three", last=0)  # made again after a delete
    assert await path.kv_read(bucket, key) == (b"three", three)


async def test_kv_writes_racing_on_one_revision_have_one_winner(path: JetStreamPath) -> None:
    bucket, key = names.KV_JOBS, f"ct-{secrets.token_hex(4)}"
    base = await path.kv_write(bucket, key, b"base", last=0)
    results = await asyncio.gather(
        *(path.kv_write(bucket, key, b"w%d" % i, last=base) for i in range(5)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, int)]
    assert len(won) == 1
    assert all(isinstance(r, WrongLastRevision) for r in results if not isinstance(r, int))


async def test_the_backlog_counts_queued_in_flight_and_delivered(
    path: JetStreamPath, broker: Broker
) -> None:
    assert await path.backlog("ct-no-such-endpoint") is None
    name = await endpoint(broker)
    assert await path.backlog(name) == Backlog(queued=0, in_flight=0, delivered=0)
    for i in range(3):
        await path.publish(names.request_subject(name), b"x", request(f"q{i}"))
    assert await path.backlog(name) == Backlog(queued=3, in_flight=0, delivered=0)
    pulled = await path.pull(name, 2.0)
    assert pulled is not None
    assert await path.backlog(name) == Backlog(queued=2, in_flight=1, delivered=1)
    await path.ack(pulled)
    want = Backlog(queued=2, in_flight=0, delivered=1)
    assert await until_backlog(path, name, want) == want


async def test_a_pull_delivers_in_order_again_after_a_nak_and_never_after_an_ack(
    path: JetStreamPath, broker: Broker
) -> None:
    name = await endpoint(broker)
    before = time.time()
    await path.publish(names.request_subject(name), b"first", request("p1"))
    await path.publish(names.request_subject(name), b"second", request("p2"))
    after = time.time()

    one = await path.pull(name, 2.0)
    assert one is not None
    assert (one.data, one.request_id[:2], one.attempt) == (b"first", "p1", 1)
    assert before - 0.01 <= one.queued_at <= after + 0.01
    await path.nak(one)
    again = await path.pull(name, 2.0)
    assert again is not None and (again.request_id, again.attempt) == (one.request_id, 2)
    assert again.queued_at == pytest.approx(one.queued_at, abs=1e-6)
    await path.ack(again)

    two = await path.pull(name, 2.0)
    assert two is not None and (two.data, two.attempt) == (b"second", 1)
    await path.ack(two)
    started = time.monotonic()
    assert await path.pull(name, 0.3) is None  # nothing left: the pull expires
    assert time.monotonic() - started < 3.0
    want = Backlog(queued=0, in_flight=0, delivered=3)
    assert await until_backlog(path, name, want) == want
