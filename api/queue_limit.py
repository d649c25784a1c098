"""Admission against an endpoint's ``max_queue_length``, mostly without asking NATS.

How many requests an endpoint has queued is a JetStream consumer-info round trip,
too slow to make on every request. Here a reading is trusted for ``TRUST_FOR`` seconds,
with every request let in since counted as queued (some went straight to a free
replica, which only makes the count err on the full side). A request is refused
only on a fresh reading, so a queue that drained meanwhile turns nobody away.

Several API instances each count only what they let in: between readings, the
queue can overshoot by what the others admit within ``TRUST_FOR``.
"""

from __future__ import annotations

import asyncio

from broker.connection import Broker
from broker.jetstream import Backlog, backlog
from shared.errors import QueueFull
from shared.metrics import QUEUE_REJECTIONS

__all__ = ["TRUST_FOR", "QueueLimit"]

TRUST_FOR = 0.1


class QueueLimit:
    def __init__(self, trust_for: float = TRUST_FOR):
        self._trust_for = trust_for
        self._seen: dict[str, tuple[float, int]] = {}  # endpoint → (read at, queued since)
        self._reading: dict[str, asyncio.Future[Backlog | None]] = {}
        self.readings = 0  # how many times the queue was read (for tests and curiosity)

    async def admit(self, broker: Broker, endpoint: str, limit: int) -> None:
        """Count one more request in, or raise QueueFull if ``limit`` are queued."""
        now = asyncio.get_running_loop().time()
        seen = self._seen.get(endpoint)
        if seen is not None and now - seen[0] < self._trust_for and seen[1] < limit:
            self._seen[endpoint] = (seen[0], seen[1] + 1)
            return
        waiting = await self._read(broker, endpoint)
        queued = waiting.queued if waiting is not None else 0
        if queued >= limit:
            QUEUE_REJECTIONS.labels(endpoint).inc()
            raise QueueFull(
                f"endpoint {endpoint!r} has {queued} requests queued (max_queue_length {limit})",
                headers={"Retry-After": "1"},
            )
        if len(self._seen) >= 10_000:  # bounded: endpoints come and go
            self._seen.clear()
        self._seen[endpoint] = (now, queued + 1)

    async def _read(self, broker: Broker, endpoint: str) -> Backlog | None:
        """One reading at a time per endpoint; callers arriving meanwhile share it.

        The reading runs as a task of its own, so a caller that gives up (hangs up)
        leaves it to the others.
        """
        task = self._reading.get(endpoint)
        if task is None:
            self.readings += 1
            task = self._reading[endpoint] = asyncio.ensure_future(backlog(broker, endpoint))
            task.add_done_callback(lambda t: self._done_reading(endpoint, t))
        return await asyncio.shield(task)

    def _done_reading(self, endpoint: str, task: asyncio.Future[Backlog | None]) -> None:
        if self._reading.get(endpoint) is task:
            del self._reading[endpoint]
        if not task.cancelled():
            task.exception()  # seen by whoever awaited it; not an error left unread
