"""``berth agent``: the fleet agent for this host."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from prometheus_client import REGISTRY

from broker.connection import connected
from shared.metrics import serve as serve_metrics
from shared.runner import OnStop, configure_logging, run_service
from shared.settings import AgentSettings
from workers import tracing
from workers.agent import Agent
from workers.environments import Environments
from workers.gpus import GpuUsage
from workers.runtimes.base import Runtime
from workers.runtimes.process import ProcessRuntime, SandboxSettings

log = logging.getLogger("workers.main")


async def docker_runtime(settings: AgentSettings) -> Runtime | None:
    """The Docker runtime if an engine answers; None (image endpoints go elsewhere) if not."""
    if (settings.docker_host or "").lower() == "none":
        return None
    from docker.errors import DockerException

    from workers.runtimes.docker import DockerRuntime

    try:
        runtime = DockerRuntime(
            settings.agent_id,
            base_url=settings.docker_host,
            host=settings.replica_host,
            memory_limit=settings.docker_memory,
            pids_limit=settings.docker_pids,
        )
        await runtime.ping(timeout=10)
    except (DockerException, OSError, TimeoutError) as exc:
        log.info("no Docker engine (%s): this agent runs Python models only", exc)
        return None
    return runtime


def main(settings: AgentSettings | None = None) -> None:
    settings = settings or AgentSettings()
    configure_logging(settings.log_level, "agent", settings.log_format)
    tracing.configure("berth-agent", **{"berth.agent": settings.agent_id})
    serve_metrics(settings.metrics_host, settings.metrics_port, "agent")
    smi = shutil.which("nvidia-smi")
    if smi is not None and settings.metrics_port is not None:
        REGISTRY.register(GpuUsage(smi))

    async def run(on_stop: OnStop) -> None:
        name = f"berth-agent-{settings.agent_id}"
        async with connected(
            settings.nats_url,
            name,
            timeout=settings.nats_timeout,
            replicas=settings.nats_replicas,
        ) as broker:
            sandbox = SandboxSettings(
                mode=settings.sandbox,
                data_dir=settings.data_dir.resolve(),
                scratch_dir=settings.data_dir.resolve() / f"agent-{settings.agent_id}" / "scratch",
                uid_base=settings.replica_uid_base,
                writable=tuple(p for p in settings.replica_writable.split(os.pathsep) if p),
            )
            agent = Agent(
                settings,
                broker,
                ProcessRuntime(
                    settings.replica_host,
                    sandbox=sandbox,
                    environments=Environments(
                        Path(settings.data_dir) / f"agent-{settings.agent_id}" / "envs"
                    ),
                ),
                await docker_runtime(settings),
            )
            on_stop(agent.shutdown)
            await agent.run()

    run_service(run)
