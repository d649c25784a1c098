"""Where a new replica goes: an agent with room, spreading an endpoint, packing GPUs.

A replica takes one slot. A GPU endpoint's replica also takes ``need.gpus``
free GPUs of ``need.gpu_type`` on one agent. Among the agents with room, the
one with the fewest replicas of this endpoint wins (spread across hosts); then,
for GPU endpoints, the one left with the fewest free GPUs of that type (pack,
so that whole hosts stay free for large replicas); for CPU endpoints, the one
with the most free slots.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from shared.instance_types import InstanceType
from shared.messages import AgentRecord

__all__ = ["CPU", "place"]

CPU = InstanceType("cpu")


def place(
    agents: Iterable[AgentRecord],
    endpoint_replicas_on: Counter[str],
    pending_on: Counter[str],
    *,
    need: InstanceType = CPU,
    runtime: str = "process",
    pending_gpus_on: Counter[str] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> str | None:
    """The agent for one more replica of an endpoint, or None if no agent has room.

    ``runtime`` is what the replica needs (``process`` or ``docker``);
    ``pending_on`` counts starts issued but not yet reported per agent;
    ``pending_gpus_on`` the GPUs of ``need.gpu_type`` those starts will hold.
    """
    best: tuple[int, int, str] | None = None
    for agent in agents:
        if agent.agent_id in exclude or runtime not in agent.runtimes:
            continue
        free = agent.slots - agent.used_slots - pending_on[agent.agent_id]
        if free <= 0:
            continue
        if need.gpu_type is not None:
            pending_gpus = (pending_gpus_on or Counter())[agent.agent_id]
            left = agent.free_gpus(need.gpu_type) - pending_gpus - need.gpus
            if left < 0:
                continue
            fit = left
        else:
            fit = -free
        key = (
            endpoint_replicas_on[agent.agent_id] + pending_on[agent.agent_id],
            fit,
            agent.agent_id,
        )
        if best is None or key < best:
            best = key
    return None if best is None else best[2]
