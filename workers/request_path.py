"""One replica's side of the data path: its slots pull requests, run them, answer them.

A slot pulls a request only while it is free, so a replica never holds more than
``concurrency_per_replica`` requests; each is kept alive with in-progress acks
until it is answered or handed back. Before a job reaches the replica it becomes
``running`` in the job store (or is acked and dropped: cancelled or expired meanwhile);
a request whose deadline passed in the queue ends here without reaching it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from broker.bodies import HEADER_ROOM
from broker.connection import BROKER_FAILURES, Broker
from broker.envelope import Reply
from broker.jobs import apply
from broker.pull import Delivery, Holdings, Puller
from shared.lifecycle import Expired, Started
from shared.messages import EndpointSpec, JobRecord, ReplicaRecord
from shared.metrics import QUEUE_WAIT, REPLICA_SECONDS
from shared.settings import AgentSettings
from workers import tracing
from workers.forward import ReplicaGone, ReplicaTimeout, forward, forward_stream
from workers.http import ReplicaClient

__all__ = ["RequestPath"]

log = logging.getLogger(__name__)

# A wait in the queue this long or longer is a span of its own in the request's trace
# (a shorter one is the process span's ``berth.queue_wait_ms`` only): a span costs its
# agent and exporter about 15 µs of CPU, more than a warm request's wait says.
QUEUE_SPAN_MIN_NS = 1_000_000


class RequestPath:
    """The slots of one replica, the requests they hold, and cancels of those."""

    def __init__(
        self,
        *,
        broker: Broker,
        spec: EndpointSpec,
        replica_id: str,
        settings: AgentSettings,
        record: ReplicaRecord,
        holdings: Holdings | None,
        stopping: asyncio.Event,
        broken: asyncio.Event,
        healthy: Callable[[ReplicaClient], Awaitable[bool]],
        break_: Callable[[str], None],
    ):
        self._broker = broker
        self.spec = spec
        self.replica_id = replica_id
        self._settings = settings
        self.record = record
        self._holdings = holdings
        self._stopping = stopping
        self._broken = broken
        self._healthy = healthy
        self._break = break_
        self.in_flight = 0
        # The requests in flight, by id: a cancel ends the wait for the replica's answer.
        # A plain request's is its slot's task (cancelled, the id in _cancelled to tell
        # it from the agent stopping), so a request needs no timeout scope of its own;
        # a stream's is the scope that also bounds it.
        self._running: dict[str, asyncio.Task[None] | asyncio.Timeout] = {}
        self._cancelled: set[str] = set()
        # This endpoint's series, looked up once: a label lookup costs more than the update.
        self._queue_wait = QUEUE_WAIT.labels(spec.name)
        self._replica_seconds = REPLICA_SECONDS.labels(spec.name)

    def cancel(self, request_id: str) -> bool:
        """Stop waiting for the replica's answer to ``request_id`` (its connection is closed)."""
        running = self._running.pop(request_id, None)
        if running is None:
            return False
        if isinstance(running, asyncio.Timeout):  # a stream: its scope ends it
            running.reschedule(asyncio.get_running_loop().time())
        else:  # the slot's task, waiting for the answer: told by a cancellation
            self._cancelled.add(request_id)
            running.cancel()
        return True

    async def slot(self, data: ReplicaClient, health: ReplicaClient) -> None:
        """One concurrency slot: pull a request only while free, answer it, repeat."""
        puller = Puller(self._broker, self.spec.name, self._holdings)
        await puller.open()
        # In-progress acks from the moment a request is taken until it is acked or
        # handed back: JetStream gives it to another agent ack_wait after the last one.
        every = max(0.2, self._settings.ack_wait / 5)
        try:
            while not self._stopping.is_set() and not self._broken.is_set():
                delivery = await puller.next(self._settings.pull_expires)
                if delivery is None:
                    continue
                if self._stopping.is_set():  # pulled while being stopped: another replica takes it
                    await puller.retry(delivery)
                    break
                self.in_flight += 1
                began = time.monotonic()
                if delivery.queued_at:
                    self._queue_wait.observe(max(0.0, time.time() - delivery.queued_at))
                beat = puller.keepalive(delivery, every=every)
                try:
                    if tracing.ENABLED:
                        await self._handle_traced(puller, delivery, data, health)
                    else:
                        await self._handle(puller, delivery, data, health)
                except BROKER_FAILURES as exc:
                    # NATS is away for longer than the answer could wait: the request,
                    # unacked, is delivered again once it is back; this slot goes on.
                    log.warning(
                        "request %s: NATS unavailable while answering it (%s); it will be "
                        "delivered again",
                        delivery.envelope.request_id,
                        exc,
                    )
                    with contextlib.suppress(Exception):
                        await puller.retry(delivery)
                except BaseException:
                    # Whatever went wrong here, the request goes back to the queue.
                    with contextlib.suppress(Exception):
                        await puller.retry(delivery)
                    raise
                finally:
                    beat.cancel()
                    puller.release(delivery)
                    self.in_flight -= 1
                    self.record.last_done_at = time.time()
                    took = time.monotonic() - began
                    self.record.busy_s = (self.record.busy_s or 0.0) + took
                    prev = self.record.service_s
                    self.record.service_s = took if prev is None else 0.8 * prev + 0.2 * took
        finally:
            await puller.close()

    async def _stream(
        self, puller: Puller, delivery: Delivery, data: ReplicaClient, timeout: float
    ) -> None:
        """A streamed request, bounded by ``timeout`` and ended by a cancel; the replica's
        failures (ReplicaTimeout for its head, ReplicaGone) are the caller's to handle."""
        env = delivery.envelope
        scope = asyncio.timeout(asyncio.get_running_loop().time() + timeout)
        self._running[env.request_id] = scope
        try:
            async with scope:
                head, chunks = await forward_stream(
                    data, env, delivery.body, timeout, self.replica_id
                )
                await self._relay(puller, delivery, head, chunks)
        except TimeoutError:
            # A cancel (the caller gave up: nobody waits for a reply), or the deadline.
            log.info("stream %s cancelled or cut at its deadline", env.request_id)
            await puller.discard(delivery)

    async def _relay(
        self, puller: Puller, delivery: Delivery, head: Reply, chunks: AsyncIterator[bytes]
    ) -> None:
        """A streamed reply: its head, each chunk as the replica sends it, then the end."""
        await puller.send_part(delivery, "head", head=head)
        limit = self._broker.max_payload - HEADER_ROOM
        try:
            async for chunk in chunks:
                for i in range(0, len(chunk), limit):
                    await puller.send_part(delivery, "chunk", chunk[i : i + limit])
        except ConnectionError as exc:  # the replica died mid-stream: the caller sees it end
            log.warning("stream %s broken: %s", delivery.envelope.request_id, exc)
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
        await puller.send_part(delivery, "end")
        await puller.discard(delivery)

    async def _handle_traced(
        self, puller: Puller, delivery: Delivery, data: ReplicaClient, health: ReplicaClient
    ) -> None:
        """:meth:`_handle` in the request's trace: a CONSUMER span around its processing,
        whose context goes on to the replica in the ``traceparent`` header. Its wait in the
        queue is the span's ``berth.queue_wait_ms``, and a span of its own (with the cold
        start it waited for, as events) when it says more than that: a wait of
        QUEUE_SPAN_MIN_NS or longer, or one for a replica's start."""
        env = delivery.envelope
        subject = delivery.subject
        parent = env.traceparent or ""
        span = tracing.start(
            f"process {subject}",
            parent,
            kind=tracing.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.operation.type": "process",
                "berth.endpoint": self.spec.name,
                "berth.replica": self.replica_id,
                "berth.request_id": env.request_id,
                "berth.attempt": delivery.attempt,
            },
        )
        stored = delivery.queued_at
        if stored:
            queued_ns = int(stored * 1e9)
            waited = span.start_ns - queued_ns
            span.attributes["berth.queue_wait_ms"] = round(max(0, waited) / 1e6, 3)
            ready_at = self.record.ready_at
            # Its replica became ready after it was queued: it waited for that start.
            cold = ready_at is not None and ready_at > stored
            if cold or waited >= QUEUE_SPAN_MIN_NS:
                self._queue_span(parent, delivery, queued_ns, span.start_ns, cold)
        # The replica's parent is this span: the caller's traceparent is replaced.
        env.headers = [(k, v) for k, v in env.headers if k != "traceparent"]
        env.headers.append(("traceparent", span.traceparent))
        token = tracing.enter(span)
        try:
            await self._handle(puller, delivery, data, health)
        except BaseException as exc:
            span.set_error(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            tracing.leave(token)
            span.end()

    def _queue_span(
        self, parent: str, delivery: Delivery, queued_ns: int, taken_ns: int, cold: bool
    ) -> None:
        """The request's time in the queue, from its publication to this agent taking it."""
        queue = tracing.start(
            f"queue {self.spec.name}",
            parent,
            attributes={"berth.attempt": delivery.attempt, "berth.cold_start": cold},
            start_ns=queued_ns,
        )
        if cold:
            started_at, ready_at = self.record.started_at, self.record.ready_at
            if started_at * 1e9 > queued_ns:
                queue.add_event("replica starting", int(started_at * 1e9))
            if ready_at is not None:
                queue.add_event("replica ready", int(ready_at * 1e9))
        queue.end(taken_ns)

    async def _handle(
        self, puller: Puller, delivery: Delivery, data: ReplicaClient, health: ReplicaClient
    ) -> None:
        env = delivery.envelope
        now = time.time()
        if env.expired(now):
            await self._expire(puller, delivery, now)
            return
        if self._broken.is_set():
            await puller.retry(delivery)
            return
        timeout = self.spec.request_timeout
        if env.deadline:
            timeout = min(timeout, env.deadline - now)
        if delivery.job_id is not None and not await self._start_job(
            puller, delivery, delivery.job_id, now
        ):
            return  # cancelled or expired meanwhile: it never reaches the replica
        rid = env.request_id
        task = asyncio.current_task()
        assert task is not None
        self._running[rid] = task  # a stream's own scope takes its place
        gone: ReplicaGone | None = None
        try:
            if env.stream and delivery.job_id is None:
                await self._stream(puller, delivery, data, timeout)
                return
            called = time.perf_counter()
            reply = await forward(data, env, delivery.body, timeout, self.replica_id)
            self._replica_seconds.observe(time.perf_counter() - called)
        except asyncio.CancelledError:
            if rid not in self._cancelled:
                raise  # the agent is stopping, not a cancel of this request
            self._cancelled.discard(rid)
            task.uncancel()
            log.info("request %s cancelled while the replica worked on it", rid)
            await puller.discard(delivery)  # the caller gave up: nobody waits for a reply
            return
        except ReplicaTimeout:
            reply = Reply.failure(
                504, "timeout", f"the replica did not answer within {timeout:.3g} s"
            )
        except ReplicaGone as exc:
            gone = exc
        finally:
            # Before any other wait: a cancel from now on finds nothing to stop.
            self._running.pop(rid, None)
        if gone is not None:
            # Dead, or a passing connection fault? A dead replica fails its health
            # check too (its exit is seen by _watch at once); then it restarts.
            if not await self._healthy(health):
                self._break(f"replica connection lost: {gone}")
            if not delivery.last_attempt:
                await puller.retry(delivery)
                return
            reply = Reply.failure(
                502,
                "replica_failed",
                f"the replica failed while handling this request ({delivery.attempt} attempts): {gone}",
            )
        limit = self._settings.max_response_bytes
        if len(reply.body) > limit:
            reply = Reply.failure(
                502,
                "response_too_large",
                f"the replica's response is {len(reply.body)} bytes, over the {limit}-byte limit "
                "(BERTH_MAX_RESPONSE_BYTES)",
            )
        if tracing.ENABLED:
            await self._reply_traced(puller, delivery, reply)
            return
        await puller.reply(delivery, reply)

    async def _reply_traced(self, puller: Puller, delivery: Delivery, reply: Reply) -> None:
        span = tracing.current()
        if span is not None:
            span.attributes["http.response.status_code"] = reply.status
        if delivery.job_id is None:
            await puller.reply(delivery, reply)
            return
        store = tracing.start(
            "store result", attributes={"berth.request_id": delivery.envelope.request_id}
        )
        try:
            await puller.reply(delivery, reply)
        finally:
            store.end()

    async def _start_job(self, puller: Puller, delivery: Delivery, job_id: str, now: float) -> bool:
        """The job becomes ``running``; False if it must not run (it ended: acked here)."""
        started = Started(at=now, replica_id=self.replica_id, ready_at=self.record.ready_at or now)
        if isinstance(await apply(self._broker, job_id, started), JobRecord):
            return True
        await puller.discard(delivery)
        return False

    async def _expire(self, puller: Puller, delivery: Delivery, now: float) -> None:
        """The request's deadline passed while it was queued: it ends without reaching a replica."""
        if delivery.job_id is not None:
            await apply(self._broker, delivery.job_id, Expired(at=now))
            await puller.discard(delivery)
        else:
            reply = Reply.failure(
                504, "timeout", "the request's deadline passed while it was queued"
            )
            await puller.reply(delivery, reply)
