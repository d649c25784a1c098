"""What the scaler does to the world, behind one small interface.

The loop observes through the KV views and these calls, and acts only through
them: ``NatsActions`` is the real thing (JetStream consumer info, requests to
agents, events); the simulation in ``bench/simulate.py`` gives the same loop a
modelled fleet and a virtual clock.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from broker.commands import send_start, send_stop
from broker.connection import Broker
from broker.envelope import Reply
from broker.events import publish_event
from broker.jetstream import Backlog, backlog
from broker.pull import fail_queued
from broker.registry import delete_key, put_model
from shared import names
from shared.messages import EndpointHealth, StartReplica, StopReplica

__all__ = ["Actions", "NatsActions"]


class Actions(Protocol):
    async def backlog(self, endpoint: str) -> Backlog | None:
        """Queued, in-flight and delivered requests of an endpoint (None: no queue yet)."""

    async def start(self, agent_id: str, cmd: StartReplica) -> bool:
        """Ask an agent to start a replica; whether it took the start."""

    async def stop(self, agent_id: str, cmd: StopReplica) -> None:
        """Ask an agent to stop a replica (it refuses a busy one if ``only_if_idle``)."""

    async def event(
        self,
        kind: Literal["scale"],
        endpoint: str,
        type_: str,
        *,
        level: Literal["normal", "warning"] = "normal",
        **details: Any,
    ) -> None:
        """Record a decision or a warning in the endpoint's events."""

    async def fail_queued(self, endpoint: str, reply: Reply, *, before: float) -> int:
        """Answer every request queued before ``before`` with ``reply``; how many."""

    async def mark_health(self, endpoint: str, health: EndpointHealth | None) -> None:
        """Mark the endpoint failing (shown on it by the API), or clear the mark (None)."""


class NatsActions:
    def __init__(self, broker: Broker, timeout: float):
        self.broker = broker
        self.timeout = timeout

    async def backlog(self, endpoint: str) -> Backlog | None:
        return await backlog(self.broker, endpoint)

    async def start(self, agent_id: str, cmd: StartReplica) -> bool:
        ok, _ = await send_start(self.broker, agent_id, cmd)
        return ok

    async def stop(self, agent_id: str, cmd: StopReplica) -> None:
        await send_stop(self.broker, agent_id, cmd)

    async def event(
        self,
        kind: Literal["scale"],
        endpoint: str,
        type_: str,
        *,
        level: Literal["normal", "warning"] = "normal",
        **details: Any,
    ) -> None:
        await publish_event(self.broker, kind, endpoint, type_, level=level, **details)

    async def fail_queued(self, endpoint: str, reply: Reply, *, before: float) -> int:
        return await fail_queued(self.broker, endpoint, reply, before=before)

    async def mark_health(self, endpoint: str, health: EndpointHealth | None) -> None:
        if health is None:
            await delete_key(self.broker, names.KV_HEALTH, endpoint)
        else:
            await put_model(self.broker, names.KV_HEALTH, endpoint, health)
