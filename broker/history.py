"""Reading a stream's history by time, and following it live: events and replica logs.

Each message holds one or more timestamped items (an event; a batch of log lines).
``read`` returns the newest ``max_items`` between two times; ``follow`` yields
items as they arrive, from a start time, until the caller stops.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.connection import Broker
from broker.streams import until_answered

__all__ = ["Unpack", "follow", "read"]

# One message's items, each a dict with a unix "timestamp".
Unpack = Callable[[bytes], list[dict[str, Any]]]


def _config(begin: float | None, *, new_only: bool = False) -> ConsumerConfig:
    if begin is not None:
        policy = DeliverPolicy.BY_START_TIME
    else:
        policy = DeliverPolicy.NEW if new_only else DeliverPolicy.ALL
    return ConsumerConfig(
        deliver_policy=policy,
        opt_start_time=datetime.fromtimestamp(begin, UTC) if begin is not None else None,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )


async def read(
    broker: Broker,
    stream: str,
    subject: str,
    unpack: Unpack,
    *,
    begin: float | None = None,
    end: float | None = None,
    max_items: int = 100,
) -> list[dict[str, Any]]:
    """What is stored when asked, read with a pull consumer: each message says how many
    are left behind it, so the read ends exactly, never on a timeout. A replicated stream
    electing its leader answers "not yet" for a moment: the read is tried again meanwhile."""
    return await until_answered(
        lambda: _read(broker, stream, subject, unpack, begin, end, max_items),
        f"a read of {subject}",
        limit=2 * broker.timeout,
    )


async def _read(
    broker: Broker,
    stream: str,
    subject: str,
    unpack: Unpack,
    begin: float | None,
    end: float | None,
    max_items: int,
) -> list[dict[str, Any]]:
    info = await broker.js.stream_info(stream, subjects_filter=subject)
    if max_items <= 0 or not sum((info.state.subjects or {}).values()):
        return []
    sub = await broker.js.pull_subscribe(subject, stream=stream, config=_config(begin))
    kept: deque[dict[str, Any]] = deque(maxlen=max_items)
    try:
        while True:
            try:
                batch = await sub.fetch(256, timeout=broker.timeout)
            except NatsTimeout:
                break  # nothing at or after `begin`
            for msg in batch:
                for item in unpack(msg.data):
                    if end is not None and item["timestamp"] > end:
                        return list(kept)
                    if begin is None or item["timestamp"] >= begin:
                        kept.append(item)
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return list(kept)


async def follow(
    broker: Broker,
    stream: str,
    subject: str,
    unpack: Unpack,
    *,
    begin: float | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Items from ``begin`` (default: from now on) as they arrive; stops when the caller does."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)

    async def on_msg(msg: Any) -> None:
        if not queue.full():  # a reader that cannot keep up loses lines, never the server's memory
            queue.put_nowait(msg.data)

    sub = await broker.js.subscribe(
        subject,
        stream=stream,
        cb=on_msg,
        ordered_consumer=True,
        deliver_policy=_config(begin, new_only=True).deliver_policy,
        config=_config(begin, new_only=True),
    )
    try:
        while True:
            data = await queue.get()
            for item in unpack(data):
                yield item
    finally:
        await sub.unsubscribe()
