"""Messages between Berth's processes on core NATS: agent commands, demand, replica events, cancels.

The scaler tells an agent to start or stop a replica and waits for its answer
(``{"ok": ..., "reason": ...}``); the API tells every agent that a request was
cancelled; the API signals demand for an endpoint; agents publish replica
events that the scaler reacts to. Handlers receive Berth's own models, never a
NATS message; a command that does not parse is answered here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from broker.connection import Broker
from shared import names
from shared.messages import StartReplica, StopReplica

__all__ = [
    "Subscriptions",
    "on_demand",
    "on_replica_events",
    "send_start",
    "send_stop",
    "serve_agent",
]

log = logging.getLogger(__name__)

# An agent's answer to a command: whether it did it, and why not.
Answer = tuple[bool, str]


class Subscriptions:
    """Subscriptions opened together and closed together."""

    def __init__(self, subs: list[Subscription]):
        self._subs = subs

    async def close(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await sub.unsubscribe()
        self._subs = []


async def send_start(broker: Broker, agent_id: str, cmd: StartReplica) -> Answer:
    """Ask ``agent_id`` to start a replica; its answer."""
    return await _command(broker, agent_id, "start", cmd.model_dump_json().encode())


async def send_stop(broker: Broker, agent_id: str, cmd: StopReplica) -> Answer:
    """Ask ``agent_id`` to stop a replica; its answer."""
    return await _command(broker, agent_id, "stop", cmd.model_dump_json().encode())


async def _command(broker: Broker, agent_id: str, verb: str, payload: bytes) -> Answer:
    resp = await broker.nc.request(
        names.agent_subject(agent_id, verb), payload, timeout=broker.timeout
    )
    answer = orjson.loads(resp.data)
    return bool(answer.get("ok")), str(answer.get("reason") or "")


async def serve_agent(
    broker: Broker,
    agent_id: str,
    *,
    start: Callable[[StartReplica], Awaitable[Answer]],
    stop: Callable[[StopReplica], Awaitable[Answer]],
    cancel: Callable[[str, str], Awaitable[None]],
) -> Subscriptions:
    """Serve ``agent_id``'s commands, and every cancel (``cancel(endpoint, request_id)``)."""

    async def respond(msg: Msg, answer: Answer) -> None:
        if msg.reply:
            await msg.respond(orjson.dumps({"ok": answer[0], "reason": answer[1]}))

    async def on_start(msg: Msg) -> None:
        try:
            cmd = StartReplica.model_validate_json(msg.data)
        except ValidationError as exc:
            await respond(msg, (False, f"bad command: {exc}"))
            return
        await respond(msg, await start(cmd))

    async def on_stop(msg: Msg) -> None:
        try:
            cmd = StopReplica.model_validate_json(msg.data)
        except ValidationError as exc:
            await respond(msg, (False, f"bad command: {exc}"))
            return
        await respond(msg, await stop(cmd))

    async def on_cancel(msg: Msg) -> None:
        endpoint = msg.subject.removeprefix(names.CANCEL_SUBJECT_PREFIX)
        await cancel(endpoint, msg.data.decode("ascii", "replace"))

    nc = broker.nc
    return Subscriptions(
        [
            await nc.subscribe(names.agent_subject(agent_id, "start"), cb=on_start),
            await nc.subscribe(names.agent_subject(agent_id, "stop"), cb=on_stop),
            await nc.subscribe(f"{names.CANCEL_SUBJECT_PREFIX}*", cb=on_cancel),
        ]
    )


async def on_demand(
    broker: Broker, handler: Callable[[str, str], Awaitable[None]]
) -> Subscriptions:
    """``handler(endpoint, digest)`` for each request's demand signal (the digest of the
    spec the API served it under)."""

    async def on_msg(msg: Msg) -> None:
        await handler(msg.subject.removeprefix(names.DEMAND_SUBJECT_PREFIX), msg.data.decode())

    sub = await broker.nc.subscribe(f"{names.DEMAND_SUBJECT_PREFIX}*", cb=on_msg)
    return Subscriptions([sub])


async def on_replica_events(
    broker: Broker, handler: Callable[[dict[str, Any], str | None], Awaitable[None]]
) -> Subscriptions:
    """``handler(event, replica_id)`` for each replica event an agent publishes; a message
    that is not one is dropped."""

    async def on_msg(msg: Msg) -> None:
        try:
            data = orjson.loads(msg.data)
            event = data["event"]
        except (ValueError, KeyError, TypeError):
            return
        if not isinstance(event, dict):
            return
        replica_id = data.get("replica_id") if isinstance(data, dict) else None
        await handler(event, replica_id if isinstance(replica_id, str) else None)

    sub = await broker.nc.subscribe(f"{names.EVENT_SUBJECT_PREFIX}replica.*", cb=on_msg)
    return Subscriptions([sub])
