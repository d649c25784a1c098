"""Where a new replica goes: an agent with a free slot, spreading an endpoint's replicas."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from shared.messages import AgentRecord

__all__ = ["place"]


def place(
    agents: Iterable[AgentRecord],
    endpoint_replicas_on: Counter[str],
    pending_on: Counter[str],
    *,
    exclude: frozenset[str] = frozenset(),
) -> str | None:
    """The agent for one more replica of an endpoint, or None if no agent has room.

    Prefers the agent with the fewest replicas of this endpoint (spread across
    hosts), then the one with the most free slots.
    """
    best: tuple[int, int, str] | None = None
    for agent in agents:
        if agent.agent_id in exclude:
            continue
        free = agent.slots - agent.used_slots - pending_on[agent.agent_id]
        if free <= 0:
            continue
        key = (
            endpoint_replicas_on[agent.agent_id] + pending_on[agent.agent_id],
            -free,
            agent.agent_id,
        )
        if best is None or key < best:
            best = key
    return None if best is None else best[2]
