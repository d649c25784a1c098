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

from broker.connection import Broker
from broker.envelope import Reply, RequestEnvelope
from broker.jobs import is_job, mark, store_response
from broker.streams import MAX_DELIVER
from shared import names
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
        return Delivery(
            msg=msg, envelope=envelope, body=msg.data, attempt=msg.metadata.num_delivered
        )

    async def reply(self, delivery: Delivery, reply: Reply) -> None:
        """Send the reply, then ack: the request is done.

        No flush between them: both go out in order on one connection, so an ack
        never reaches the server without the reply before it, and a reply lost
        with the connection means a lost ack too, hence redelivery.
        """
        reply_to = delivery.envelope.reply_to
        if is_job(reply_to):  # async: kept with a JetStream ack before the request is acked
            await store_response(self._broker, reply_to, reply, reply.replica_id or "")
        elif reply_to:
            await self._broker.nc.publish(reply_to, reply.body, headers=reply.to_headers())
        await delivery.msg.ack()

    async def started(self, delivery: Delivery, replica_id: str) -> None:
        """An async job's state becomes ``running`` (sync requests: nothing to do)."""
        reply_to = delivery.envelope.reply_to
        if is_job(reply_to):
            await mark(
                self._broker,
                reply_to.removeprefix(names.RESULT_SUBJECT_PREFIX),
                status=JobStatus.RUNNING,
                started_at=time.time(),
                replica_id=replica_id,
            )

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
