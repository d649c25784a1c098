"""The agent side of the data path: pull one request when a slot is free, reply, ack.

A pull asks for at most as many messages as there are free slots; a message is
acked only after its reply was handed to NATS, and kept alive with in-progress
acks while the replica works on it.

A request whose in-progress acks stop (its agent died) is delivered again after
``ack_wait``. Late acks from a live agent (its process stalled, or NATS restarted
and restored the consumer's old delivery times) look the same to JetStream, so a
request delivered again is first asked about (:class:`Holdings`): every agent
answers whether one of its slots still holds it, and one that does is left to
finish it. A request runs twice only if its agent gave no sign of life for
``ack_wait`` and then no answer for ``held_wait``.

The pull is JetStream's own protocol, spoken directly: a next-message request to
the consumer with this puller's inbox as its reply subject, and the delivery (or a
status: 408 when the request expired) handed to the waiting slot by the
subscription's callback. nats-py's ``fetch`` does the same through two extra tasks
and a uuid per call, which showed in the agent's profile at concurrency 1. Pulls,
deliveries, replies and acks all ride the broker's lean data-path connection
(:mod:`broker.wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from broker.bodies import drop_body, fits, get_body, put_body
from broker.connection import BROKER_FAILURES, Broker
from broker.envelope import H, Reply, RequestEnvelope
from broker.jetstream import (
    HEARTBEAT,
    NOTHING,
    ack_fields,
    next_request,
    next_subject,
    status,
)
from broker.jobs import is_job, job_id, store_response
from broker.streams import MAX_DELIVER
from broker.wire import Message, Wire
from shared import names
from shared.errors import BerthError, BrokerUnavailable
from shared.waiting import wait_by

__all__ = ["Delivery", "Holdings", "KeepAlive", "Puller", "fail_queued"]

log = logging.getLogger(__name__)

# A pull's own expiry comes as a 408 from the server; this much later, the puller
# stops waiting for it (the server restarted, or the connection dropped meanwhile).
EXPIRY_GRACE = 1.0
# Pauses between tries to store a job's answer while NATS is away (a restart: seconds).
STORE_RETRIES = (0.5, 1.0, 2.0, 4.0)


@dataclass(slots=True)
class Delivery:
    """One request taken from the queue; answer it with :meth:`Puller.reply`."""

    msg: Message
    envelope: RequestEnvelope
    body: bytes
    attempt: int
    queued_at: float  # when JetStream stored the request (unix time)

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= MAX_DELIVER

    @property
    def job_id(self) -> str | None:
        """The async job this request is, or None for a sync or streamed request."""
        reply_to = self.envelope.reply_to
        return job_id(reply_to) if is_job(reply_to) else None


class Holdings:
    """The requests one agent's slots hold, by id, and the fleet's answer about others'.

    Every agent answers on ``berth.held.*`` for each request asked about: "held" if
    one of its slots took it and has not yet acked or handed it back, else "free".
    """

    def __init__(self, fleet_size: Callable[[], Awaitable[int]], wait: float):
        self.ids: set[str] = set()
        self._fleet_size = fleet_size
        self._wait = wait
        self._wire: Wire | None = None
        self._sid = 0

    async def open(self, broker: Broker) -> None:
        self._wire = wire = await broker.wire()
        self._sid = wire.subscribe(f"{names.HELD_SUBJECT_PREFIX}*", self._on_ask)

    def close(self) -> None:
        if self._wire is not None:
            self._wire.unsubscribe(self._sid)

    def _on_ask(self, msg: Message) -> None:
        if msg.reply and self._wire is not None:
            held = msg.data.decode("ascii", "replace") in self.ids
            self._wire.publish(msg.reply, b"held" if held else b"free")

    async def held_elsewhere(self, endpoint: str, request_id: str) -> bool:
        """True if a live agent answers that it still holds the request.

        Waits for a "held", for every agent with a fresh record to answer, or for
        ``wait`` seconds (a dead agent's record stays fresh a while; it never answers).
        """
        wire = self._wire
        assert wire is not None, "open() first"
        try:
            agents = await self._fleet_size()
        except Exception as exc:  # unknown: wait out the time for answers
            log.debug("fleet size unknown: %r", exc)
            agents = 1 << 30
        loop = asyncio.get_running_loop()
        verdict: asyncio.Future[bool] = loop.create_future()
        answers = 0

        def on_answer(msg: Message) -> None:
            nonlocal answers
            answers += 1
            if verdict.done():
                return
            if msg.data == b"held":
                verdict.set_result(True)
            elif answers >= agents:
                verdict.set_result(False)

        inbox = f"_INBOX.{secrets.token_hex(11)}"
        sid = wire.subscribe(inbox, on_answer)
        try:
            wire.publish(names.held_subject(endpoint), request_id.encode(), reply=inbox)
            wire.flush()
            try:
                return await wait_by(verdict, loop.time() + self._wait)
            except TimeoutError:
                return False
        finally:
            wire.unsubscribe(sid)


class Puller:
    def __init__(self, broker: Broker, endpoint: str, holdings: Holdings | None = None):
        self._broker = broker
        self.endpoint = endpoint
        self._holdings = holdings
        self._next_subject = next_subject(endpoint)
        self._inbox = f"_INBOX.{secrets.token_hex(11)}"
        self._wire: Wire | None = None
        self._sid = 0
        self._arrived: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None

    async def open(self) -> None:
        self._wire = await self._broker.wire()
        self._sid = self._wire.subscribe(self._inbox, self._on_msg)

    async def close(self) -> None:
        if self._wire is not None:
            self._wire.unsubscribe(self._sid)

    @property
    def wire(self) -> Wire:
        assert self._wire is not None, "open() first"
        return self._wire

    def _on_msg(self, msg: Message) -> None:
        self._arrived.append(msg)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _pull(self, expires: float) -> Message | None:
        """One request from the consumer, or None once ``expires`` seconds passed without."""
        while self._arrived:  # left from an earlier pull: a late delivery, or a stale status
            msg = self._arrived.popleft()
            if status(msg) is None:
                return msg
        if not self.wire.is_connected:
            # A pull made now would wait in the connection's buffer and reach the server
            # after this slot gave up on it: one stale pull per `expires` of the outage,
            # each able to hand the slot a request it no longer waits for, which then
            # sits unacknowledged until it is redelivered elsewhere.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(expires):
                    await self.wire.wait_connected()
            return None
        self.wire.publish(self._next_subject, next_request(expires), reply=self._inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + expires + EXPIRY_GRACE
        while True:
            if not self._arrived:
                self._waiter = loop.create_future()
                try:
                    await wait_by(self._waiter, deadline)
                except TimeoutError:
                    return None
                finally:
                    self._waiter = None
            msg = self._arrived.popleft()
            code = status(msg)
            if code is None:
                return msg
            if code in NOTHING:
                return None
            if code != HEARTBEAT:  # the pull failed
                # The consumer was deleted (its endpoint is going away), or JetStream is
                # briefly unavailable (a restart, a cluster election): nothing this time.
                why = (msg.headers or {}).get("Description", "")
                log.info("pull from %s: %s %s", self.endpoint, code, why)
                await asyncio.sleep(min(expires, 0.5))
                return None

    async def next(self, expires: float) -> Delivery | None:
        """Wait up to ``expires`` seconds for one request; None if none came."""
        msg = await self._pull(expires)
        if msg is None:
            return None
        envelope = RequestEnvelope.from_headers(msg.headers or {})
        delivered, stored_ns = ack_fields(msg.reply)
        delivery = Delivery(
            msg=msg, envelope=envelope, body=msg.data, attempt=delivered, queued_at=stored_ns / 1e9
        )
        holdings = self._holdings
        if holdings is not None:
            rid = envelope.request_id
            if delivery.attempt > 1 and await holdings.held_elsewhere(self.endpoint, rid):
                # Left unacked: its holder's in-progress acks keep it from coming back,
                # and its ack ends it; if the holder dies, it is delivered again.
                log.warning(
                    "request %s delivered again (attempt %d) while a live agent still "
                    "answers it: left to that agent",
                    rid,
                    delivery.attempt,
                )
                return None
            holdings.ids.add(rid)
        if envelope.body_ref:
            try:
                delivery.body = await get_body(self._broker, envelope.body_ref)
            except BerthError as exc:  # its object is gone: answer, never loop on it
                await self.reply(delivery, Reply.failure(502, "body_lost", exc.message))
                return None
        return delivery

    def release(self, delivery: Delivery) -> None:
        """This slot no longer holds the request (acked, handed back, or abandoned)."""
        if self._holdings is not None:
            self._holdings.ids.discard(delivery.envelope.request_id)

    async def _done(self, delivery: Delivery) -> None:
        """The request is answered: ack it, and drop its claim-checked body."""
        self.wire.publish(delivery.msg.reply, b"+ACK")
        self.release(delivery)
        if delivery.envelope.body_ref:
            await drop_body(self._broker, delivery.envelope.body_ref)

    async def reply(self, delivery: Delivery, reply: Reply) -> None:
        """Send the reply, then ack: the request is done.

        No flush between them: both go out in order on one connection, so an ack
        never reaches the server without the reply before it, and a reply lost
        with the connection means a lost ack too, hence redelivery.
        """
        reply_to = delivery.envelope.reply_to
        if not fits(self._broker, len(reply.body)):
            name = f"res-{delivery.envelope.request_id}"
            reply.body_ref = await put_body(self._broker, name, reply.body)
            reply.body = b""
        if is_job(reply_to):  # async: kept with a JetStream ack before the request is acked
            await self._store(delivery, reply)
        elif reply_to:
            self.wire.publish(reply_to, reply.body, headers=reply.to_headers())
        await self._done(delivery)
        # Out now, in one write: the caller is waiting, and the reply should not wait for
        # the slot's next pull to be built.
        self.wire.flush()

    async def _store(self, delivery: Delivery, reply: Reply) -> None:
        """A job's answer, kept: tried again through a NATS restart (seconds) rather than
        run again; past STORE_RETRIES, the error is the caller's (the request is
        delivered again)."""
        reply_to = delivery.envelope.reply_to
        for pause in (*STORE_RETRIES, None):
            try:
                await store_response(self._broker, reply_to, reply)
                return
            except BROKER_FAILURES as exc:
                if pause is None:
                    raise
                log.warning(
                    "request %s: its answer is not stored yet (%s); trying again in %g s",
                    delivery.envelope.request_id,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)

    async def send_part(
        self, delivery: Delivery, part: str, body: bytes = b"", head: Reply | None = None
    ) -> None:
        """One part of a streamed reply ("head", "chunk" or "end"), on core NATS, in order."""
        headers = head.to_headers() if head is not None else {}
        headers[H.PART] = part
        self.wire.publish(delivery.envelope.reply_to, body, headers=headers)

    async def discard(self, delivery: Delivery) -> None:
        """Done, with no (more) answer: cancelled, or a stream that ended."""
        await self._done(delivery)

    async def retry(self, delivery: Delivery, delay: float | None = None) -> None:
        """Give the request back to the queue for another replica."""
        nak = b"-NAK" + (b' {"delay":%d}' % int(delay * 1e9) if delay else b"")
        self.wire.publish(delivery.msg.reply, nak)
        self.release(delivery)

    def keepalive(self, delivery: Delivery, every: float) -> KeepAlive:
        """Send in-progress acks every ``every`` seconds until ``cancel()``.

        A timer, not a task: most requests end long before the first beat, and
        then this costs one timer handle.
        """
        return KeepAlive(self.wire, delivery.msg.reply, every)


class KeepAlive:
    """In-progress acks for one delivery, every ``every`` seconds, until cancelled."""

    __slots__ = ("_every", "_handle", "_loop", "_subject", "_wire")

    def __init__(self, wire: Wire, subject: str, every: float):
        self._wire = wire
        self._subject = subject
        self._every = every
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(every, self._beat)

    def _beat(self) -> None:
        with contextlib.suppress(BrokerUnavailable):  # a lost one only shortens the grace
            self._wire.publish(self._subject, b"+WPI")
        self._handle = self._loop.call_later(self._every, self._beat)

    def cancel(self) -> None:
        self._handle.cancel()


async def fail_queued(
    broker: Broker, endpoint: str, reply: Reply, *, before: float, limit: int = 100_000
) -> int:
    """Answer with ``reply`` (a terminal error) every request queued before ``before`` (unix time).

    A request that arrived later is handed back untouched: it was sent after the
    failure and may be for a fixed config.
    """
    puller = Puller(broker, endpoint)
    await puller.open()
    failed = 0
    try:
        while failed < limit:
            delivery = await puller.next(0.05)
            if delivery is None:
                break
            if delivery.queued_at > before:
                await puller.retry(delivery)
                break
            await puller.reply(delivery, reply)
            failed += 1
    finally:
        await puller.close()
    return failed
