"""The agent side of the data path: pull one request when a slot is free, reply, ack.

A pull asks for at most as many messages as there are free slots; a message is
acked only after its reply was handed to NATS, and kept alive with in-progress
acks while the replica works on it.

The pull is JetStream's own protocol, spoken directly: a next-message request to
the consumer with this puller's inbox as its reply subject, and the delivery (or a
status: 408 when the request expired) handed to the waiting slot by the
subscription's callback. nats-py's ``fetch`` does the same through two extra tasks
and a uuid per call, which showed in the agent's profile at concurrency 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker.bodies import drop_body, fits, get_body, put_body
from broker.connection import Broker, in_background
from broker.envelope import H, Reply, RequestEnvelope
from broker.jobs import EXPIRED_IN_QUEUE, LIVE, finish, is_job, job_id, store_response, transition
from broker.streams import MAX_DELIVER
from shared import names
from shared.errors import BerthError
from shared.messages import JobStatus

__all__ = ["Delivery", "Puller", "fail_queued"]

log = logging.getLogger(__name__)

# A pull's own expiry comes as a 408 from the server; this much later, the puller
# stops waiting for it (the server restarted, or the connection dropped meanwhile).
EXPIRY_GRACE = 1.0
# Statuses that end a pull with nothing, normally: it expired, or found nothing.
_NOTHING = frozenset({"404", "408"})


@dataclass(slots=True)
class Delivery:
    """One request taken from the queue; answer it with :meth:`Puller.reply`."""

    msg: Msg
    envelope: RequestEnvelope
    body: bytes
    attempt: int

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= MAX_DELIVER


class Puller:
    def __init__(self, broker: Broker, endpoint: str):
        self._broker = broker
        self.endpoint = endpoint
        self._next_subject = (
            f"$JS.API.CONSUMER.MSG.NEXT.{names.REQUESTS_STREAM}.{names.consumer_name(endpoint)}"
        )
        self._inbox = ""
        self._sub: Subscription | None = None
        self._arrived: deque[Msg] = deque()
        self._waiter: asyncio.Future[None] | None = None

    async def open(self) -> None:
        self._inbox = self._broker.nc.new_inbox()
        self._sub = await self._broker.nc.subscribe(self._inbox, cb=self._on_msg)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        self._arrived.append(msg)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _pull(self, expires: float) -> Msg | None:
        """One request from the consumer, or None once ``expires`` seconds passed without."""
        while self._arrived:  # left from an earlier pull: a late delivery, or a stale status
            msg = self._arrived.popleft()
            if _status(msg) is None:
                return msg
        request = orjson.dumps({"batch": 1, "expires": int(expires * 1e9)})
        await self._broker.nc.publish(self._next_subject, request, reply=self._inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + expires + EXPIRY_GRACE
        while True:
            if not self._arrived:
                self._waiter = loop.create_future()
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._waiter
                except TimeoutError:
                    return None
                finally:
                    self._waiter = None
            msg = self._arrived.popleft()
            status = _status(msg)
            if status is None:
                return msg
            if status in _NOTHING:
                return None
            if status != "100":  # not a heartbeat: the pull failed
                # The consumer was deleted (its endpoint is going away), or JetStream is
                # briefly unavailable (a restart, a cluster election): nothing this time.
                why = (msg.headers or {}).get("Description", "")
                log.info("pull from %s: %s %s", self.endpoint, status, why)
                await asyncio.sleep(min(expires, 0.5))
                return None

    async def next(self, expires: float) -> Delivery | None:
        """Wait up to ``expires`` seconds for one request; None if none came."""
        assert self._sub is not None, "open() first"
        msg = await self._pull(expires)
        if msg is None:
            return None
        envelope = RequestEnvelope.from_headers(msg.headers or {})
        delivery = Delivery(
            msg=msg, envelope=envelope, body=msg.data, attempt=msg.metadata.num_delivered
        )
        if envelope.body_ref:
            try:
                delivery.body = await get_body(self._broker, envelope.body_ref)
            except BerthError as exc:  # its object is gone: answer, never loop on it
                await self.reply(delivery, Reply.failure(502, "body_lost", exc.message))
                return None
        return delivery

    async def _done(self, delivery: Delivery) -> None:
        """The request is answered: ack it, and drop its claim-checked body."""
        await delivery.msg.ack()
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
            await store_response(self._broker, reply_to, reply, reply.replica_id or "")
        elif reply_to:
            await self._broker.nc.publish(reply_to, reply.body, headers=reply.to_headers())
        await self._done(delivery)
        # Let NATS's flusher send them now: the caller is waiting, and the slot's next
        # pull would otherwise go first (50 µs at concurrency 1, docs/performance.md).
        await asyncio.sleep(0)

    async def started(self, delivery: Delivery, replica_id: str, ready_at: float) -> bool:
        """An async job becomes ``running``; False if it must not run (cancelled, expired, done).

        A sync request always runs. A job found ended is acked here: nothing is left to do.
        """
        reply_to = delivery.envelope.reply_to
        if not is_job(reply_to):
            return True
        job = await transition(
            self._broker,
            job_id(reply_to),
            LIVE,
            status=JobStatus.RUNNING,
            started_at=time.time(),
            replica_id=replica_id,
            replica_ready_at=ready_at,
        )
        if job is None:
            await self._done(delivery)
            return False
        return True

    async def expire(self, delivery: Delivery) -> None:
        """The request's deadline passed while it was queued: it ends without reaching a replica."""
        reply_to = delivery.envelope.reply_to
        if is_job(reply_to):
            await finish(
                self._broker,
                job_id(reply_to),
                JobStatus.EXPIRED,
                reason=EXPIRED_IN_QUEUE,
            )
            await self._done(delivery)
        else:
            reply = Reply.failure(
                504, "timeout", "the request's deadline passed while it was queued"
            )
            await self.reply(delivery, reply)

    async def send_part(
        self, delivery: Delivery, part: str, body: bytes = b"", head: Reply | None = None
    ) -> None:
        """One part of a streamed reply ("head", "chunk" or "end"), on core NATS, in order."""
        headers = head.to_headers() if head is not None else {}
        headers[H.PART] = part
        await self._broker.nc.publish(delivery.envelope.reply_to, body, headers=headers)

    async def discard(self, delivery: Delivery) -> None:
        """Done, with no (more) answer: cancelled, or a stream that ended."""
        await self._done(delivery)

    async def retry(self, delivery: Delivery, delay: float | None = None) -> None:
        """Give the request back to the queue for another replica."""
        await delivery.msg.nak(delay=delay)

    @contextlib.contextmanager
    def keepalive(self, delivery: Delivery, every: float) -> Iterator[None]:
        """Send in-progress acks every ``every`` seconds while the ``with`` body runs.

        A timer, not a task: most requests end long before the first beat, and
        then this costs one timer handle.
        """
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None
        beats: set[asyncio.Future[None]] = set()

        def beat() -> None:
            nonlocal handle
            # A failed in-progress ack only shortens the grace.
            in_background(beats, delivery.msg.in_progress(), "in-progress ack")
            handle = loop.call_later(every, beat)

        handle = loop.call_later(every, beat)
        try:
            yield
        finally:
            handle.cancel()


def _status(msg: Msg) -> str | None:
    """A status message's code (JetStream's answers to a pull carry no payload), or None."""
    if msg.data or not msg.headers:
        return None
    return msg.headers.get("Status")


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
            if delivery.msg.metadata.timestamp.timestamp() > before:
                await puller.retry(delivery)
                break
            await puller.reply(delivery, reply)
            failed += 1
    finally:
        await puller.close()
    return failed
