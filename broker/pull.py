"""The agent side of the data path: pull one request when a slot is free, reply, ack.

A pull asks for at most as many messages as there are free slots; a message is
acked only after its reply was handed to NATS, and kept alive with in-progress
acks while the replica works on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from broker.bodies import drop_body, fits, get_body, put_body
from broker.connection import Broker
from broker.envelope import H, Reply, RequestEnvelope
from broker.jobs import EXPIRED_IN_QUEUE, LIVE, finish, is_job, job_id, store_response, transition
from broker.streams import MAX_DELIVER
from shared import names
from shared.errors import BerthError
from shared.messages import JobStatus

__all__ = ["Delivery", "Puller", "fail_queued"]

log = logging.getLogger(__name__)


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
        self._sub: JetStreamContext.PullSubscription | None = None

    async def open(self) -> None:
        self._sub = await self._broker.js.pull_subscribe_bind(
            durable=names.consumer_name(self.endpoint), stream=names.REQUESTS_STREAM
        )

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def next(self, expires: float) -> Delivery | None:
        """Wait up to ``expires`` seconds for one request; None if none came."""
        assert self._sub is not None, "open() first"
        try:
            msgs = await self._sub.fetch(1, timeout=expires)
        except (TimeoutError, NatsTimeout):
            return None
        except APIError as exc:
            # The consumer was deleted (its endpoint is going away) or JetStream is
            # briefly unavailable (a restart, a cluster election): nothing this time.
            log.info("pull from %s: %s", self.endpoint, exc.description or type(exc).__name__)
            await asyncio.sleep(min(expires, 0.5))
            return None
        msg = msgs[0]
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
        beats: set[asyncio.Task[None]] = set()

        def beat() -> None:
            nonlocal handle
            task = loop.create_task(delivery.msg.in_progress())
            beats.add(task)
            task.add_done_callback(_settle(beats))
            handle = loop.call_later(every, beat)

        handle = loop.call_later(every, beat)
        try:
            yield
        finally:
            handle.cancel()


def _settle(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a failed in-progress ack only shortens the grace; never raise

    return done


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
