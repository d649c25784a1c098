"""Events on ``berth.evt.<kind>.<endpoint>``, stored by the BERTH_EVENTS stream.

The payload is OctoAI's event shape, so ``/v1/events/{name}`` can return it as is.
Events never carry secret values; callers pass only names and reasons.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from nats.js.errors import NotFoundError

from broker import history
from broker.connection import Broker
from shared import names

__all__ = ["follow_events", "last_event", "publish_event", "read_events"]


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


def _unpack(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(data)]


async def last_event(
    broker: Broker, kind: Literal["replica", "scale", "endpoint"], endpoint: str
) -> dict[str, Any] | None:
    """The newest event of one kind for an endpoint (one direct read), or None."""
    try:
        msg = await broker.js.get_last_msg(names.EVENTS_STREAM, names.event_subject(kind, endpoint))
    except NotFoundError:
        return None
    return _unpack(msg.data or b"{}")[0]


async def read_events(
    broker: Broker,
    endpoint: str,
    *,
    begin: float | None = None,
    end: float | None = None,
    max_lines: int = 100,
) -> list[dict[str, Any]]:
    """The endpoint's events between ``begin`` and ``end`` (unix times), the newest ``max_lines``."""
    return await history.read(
        broker,
        names.EVENTS_STREAM,
        names.event_subject("*", endpoint),
        _unpack,
        begin=begin,
        end=end,
        max_items=max_lines,
    )


def follow_events(
    broker: Broker, endpoint: str, *, begin: float | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The endpoint's events as they happen (from ``begin``, if given)."""
    return history.follow(
        broker, names.EVENTS_STREAM, names.event_subject("*", endpoint), _unpack, begin=begin
    )
