"""Events on ``berth.evt.<kind>.<endpoint>``, stored by the BERTH_EVENTS stream.

The payload is OctoAI's event shape, so ``/v1/events/{name}`` can return it as is.
Events never carry secret values; callers pass only names and reasons.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.connection import Broker
from shared import names

__all__ = ["publish_event", "read_events"]


async def publish_event(
    broker: Broker,
    kind: Literal["replica", "scale", "endpoint"],
    endpoint: str,
    type_: str,
    *,
    level: Literal["normal", "warning"] = "normal",
    replica_id: str | None = None,
    **details: Any,
) -> None:
    event = {
        "timestamp": time.time(),
        "replica_id": replica_id,
        "event": {
            "level": level,
            "type": type_,
            "endpoint": endpoint,
            "tenant_id": "default",
            "account_key": "default",
            "details": details,
        },
    }
    await broker.nc.publish(names.event_subject(kind, endpoint), orjson.dumps(event))


async def read_events(
    broker: Broker,
    endpoint: str,
    *,
    begin: float | None = None,
    end: float | None = None,
    max_lines: int = 100,
) -> list[dict[str, Any]]:
    """The endpoint's events between ``begin`` and ``end`` (unix times), the newest ``max_lines``.

    Reads what is stored when asked, with a pull consumer: each message says how
    many are left behind it, so the read ends exactly, never on a timeout.
    """
    subject = names.event_subject("*", endpoint)
    info = await broker.js.stream_info(names.EVENTS_STREAM, subjects_filter=subject)
    if max_lines <= 0 or not sum((info.state.subjects or {}).values()):
        return []
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if begin else DeliverPolicy.ALL,
        opt_start_time=datetime.fromtimestamp(begin, UTC) if begin else None,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await broker.js.pull_subscribe(subject, stream=names.EVENTS_STREAM, config=config)
    kept: deque[dict[str, Any]] = deque(maxlen=max_lines)
    try:
        while True:
            try:
                batch = await sub.fetch(256, timeout=broker.timeout)
            except NatsTimeout:
                break  # nothing at or after `begin`
            for msg in batch:
                event = orjson.loads(msg.data)
                if end is not None and event["timestamp"] > end:
                    return list(kept)
                if begin is None or event["timestamp"] >= begin:
                    kept.append(event)
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return list(kept)
