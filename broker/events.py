"""Events on ``berth.evt.<kind>.<endpoint>``, stored by the BERTH_EVENTS stream.

The payload is OctoAI's event shape, so ``/v1/events/{name}`` can return it as is.
Events never carry secret values; callers pass only names and reasons.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson

from broker.connection import Broker
from shared import names

__all__ = ["publish_event"]


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
