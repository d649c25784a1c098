"""The API side of the data path: publish a request, wait for its reply.

One wildcard subscription per API instance receives every reply; a dict of
futures keyed by request id routes each to its waiting caller. The request
itself is a JetStream publish, acked (:func:`broker.streams.js_publish`). Both
ride the broker's lean data-path connection (:mod:`broker.wire`), whose
subscribers run straight from the socket's read, and whose publishes leave in
one write per turn of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from broker.bodies import fits, put_body
from broker.connection import Broker
from broker.envelope import H, Reply, RequestEnvelope, StreamPart
from broker.jetstream import js_publish
from broker.streams import dequeue, pin_queue_tail
from broker.wire import Message, Wire
from shared import names
from shared.errors import BrokerUnavailable

__all__ = ["NUDGE_EVERY", "PIN_EVERY", "Requester"]

log = logging.getLogger(__name__)

# At most one demand nudge per endpoint this often (seconds): the first request of a
# burst wakes the scaler at once, and the scaler reads the backlog itself, so one
# nudge per request would only cost the scaler and NATS a message each.
NUDGE_EVERY = 0.01
# While requests flow, the queue's tail is pinned again this often (seconds), so a
# block that filled up and gave way to a new one costs at most this long of churn.
PIN_EVERY = 1.0


class Requester:
    def __init__(self, broker: Broker, instance_id: str | None = None):
        self._broker = broker
        self._prefix = f"_INBOX.berth.{instance_id or secrets.token_hex(8)}"
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._streams: dict[str, asyncio.Queue[StreamPart]] = {}
        self._wire: Wire | None = None
        self._nudged: dict[str, tuple[float, str]] = {}  # endpoint → (loop time, digest)
        self._trailing: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._pinned_at = -PIN_EVERY

    async def start(self) -> None:
        self._wire = wire = await self._broker.wire()
        wire.subscribe(f"{self._prefix}.*", self._on_reply)

    def reply_subject(self, request_id: str) -> str:
        return f"{self._prefix}.{request_id}"

    def _on_reply(self, msg: Message) -> None:
        request_id = msg.subject.rsplit(".", 1)[-1]
        queue = self._streams.get(request_id)
        if queue is not None:
            headers = msg.headers
            part = headers.get(H.PART) if headers else None
            queue.put_nowait(StreamPart(part, headers, msg.data))
            return
        fut = self._waiting.get(request_id)
        if fut is not None and not fut.done():
            fut.set_result(Reply.from_message(msg.headers, msg.data))

    def expect(self, request_id: str) -> asyncio.Future[Reply]:
        """Register interest in a reply *before* publishing, so none can be missed."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        return fut

    def expect_stream(self, request_id: str) -> asyncio.Queue[StreamPart]:
        """Every message sent to the request's inbox, in order (a streamed reply has many)."""
        queue: asyncio.Queue[StreamPart] = asyncio.Queue()
        self._streams[request_id] = queue
        return queue

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)
        self._streams.pop(request_id, None)

    async def cancel(self, endpoint: str, request_id: str, seq: int | None) -> None:
        """Take a request out of the queue if it is still there, and stop it where it runs."""
        if seq and not await dequeue(self._broker, seq):
            log.debug("cancel %s: not in the queue", request_id)
        await self._broker.nc.publish(names.cancel_subject(endpoint), request_id.encode())

    async def publish(
        self, endpoint: str, envelope: RequestEnvelope, body: bytes, digest: str = ""
    ) -> int:
        """Store the request durably in JetStream and nudge the scaler; its stream sequence."""
        if not fits(self._broker, len(body)):
            envelope.body_ref = await put_body(self._broker, f"req-{envelope.request_id}", body)
            body = b""
        assert self._wire is not None, "start() first"
        wire = self._wire
        subject = names.request_subject(endpoint)
        try:
            seq = await js_publish(self._broker, subject, body, envelope.to_headers())
        except BrokerUnavailable as exc:  # no stream takes it, it was refused, or no ack came
            raise BrokerUnavailable(f"request queue unavailable: {exc.message}") from exc
        # Core NATS, fire and forget: the scaler reacts at once to demand on an
        # endpoint; its periodic look at the backlog covers a lost nudge.
        # The nudge names the config the caller saw, which may be newer than the scaler's view.
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._nudged.get(endpoint)
        if last is None or now - last[0] >= NUDGE_EVERY or last[1] != digest:
            self._nudged[endpoint] = (now, digest)
            wire.publish(names.demand_subject(endpoint), digest.encode())
        elif endpoint not in self._trailing:
            # One more at the window's end, so the scaler always sees the latest request.
            self._trailing[endpoint] = loop.call_later(
                last[0] + NUDGE_EVERY - now, self._nudge_later, endpoint, digest
            )
        if now - self._pinned_at >= PIN_EVERY:
            self._pinned_at = now
            self._pin_in_background()
        return seq

    def _pin_in_background(self) -> None:
        """Pin the queue's tail without waiting; a failure is logged, never raised or left
        unread (a missed pin only costs churn until the next one, with more traffic)."""
        task = asyncio.ensure_future(pin_queue_tail(self._broker))
        self._background.add(task)

        def done(task: asyncio.Future[None]) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.debug("pinning the queue failed: %r", task.exception())

        task.add_done_callback(done)

    def _nudge_later(self, endpoint: str, digest: str) -> None:
        self._trailing.pop(endpoint, None)
        self._nudged[endpoint] = (asyncio.get_running_loop().time(), digest)
        assert self._wire is not None
        # Closed meanwhile: the scaler's own look at the backlog covers a lost nudge.
        with contextlib.suppress(BrokerUnavailable):
            self._wire.publish(names.demand_subject(endpoint), digest.encode())
