"""``berth agent``: the fleet agent for this host."""

from __future__ import annotations

from broker.connection import connected
from shared.runner import OnStop, configure_logging, run_service
from shared.settings import AgentSettings
from workers.agent import Agent
from workers.runtimes.process import ProcessRuntime


def main(settings: AgentSettings | None = None) -> None:
    settings = settings or AgentSettings()
    configure_logging(settings.log_level, "agent")

    async def run(on_stop: OnStop) -> None:
        name = f"berth-agent-{settings.agent_id}"
        async with connected(settings.nats_url, name, timeout=settings.nats_timeout) as broker:
            agent = Agent(settings, broker, ProcessRuntime(settings.replica_host))
            on_stop(agent.shutdown)
            await agent.run()

    run_service(run)
