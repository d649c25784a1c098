"""The fleet agent: one per host; runs the replicas the scaler asks for.

Commands arrive as NATS requests on ``berth.agent.<id>.start`` / ``.stop``; the
agent answers at once and does the work in the background. Replica records
(the replicas KV bucket) and the agent's own record are written on every
change and refreshed by a heartbeat, so a reader can tell a live replica from
one whose agent vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from broker.artifacts import ArchiveLimits, ModelCache
from broker.commands import serve_agent
from broker.connection import Broker
from broker.pull import Holdings
from broker.registry import delete_key, put_model, read_models
from shared import names
from shared.instance_types import parse_instance_type
from shared.messages import (
    STALE_HEARTBEATS,
    AgentRecord,
    ReplicaRecord,
    StartReplica,
    StopReplica,
)
from shared.settings import AgentSettings
from workers.assets import AssetCache
from workers.gpus import GpuPool, discover, host_memory_mib
from workers.runtimes.base import Runtime
from workers.supervisor import ReplicaSupervisor

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        broker: Broker,
        runtime: Runtime,
        docker: Runtime | None = None,
    ):
        self.settings = settings
        self.broker = broker
        self.runtime = runtime
        self.docker = docker
        self.id = settings.agent_id
        self.work_dir = Path(settings.data_dir) / f"agent-{self.id}"
        self.models = ModelCache(
            broker,
            self.work_dir / "models",
            keep=settings.model_keep,
            limits=ArchiveLimits.of(settings),
        )
        self.assets = AssetCache(broker, self.work_dir / "assets", settings.asset_cache_bytes)
        self.replicas: dict[str, ReplicaSupervisor] = {}
        self.gpus = GpuPool([])
        # The host's size does not change while the agent runs: read it once.
        self._cpus, self._memory_mib = os.cpu_count() or 0, host_memory_mib()
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdown = asyncio.Event()
        # The requests this agent's slots hold: asked about by agents given one again.
        self.holdings = Holdings(self._fleet_size, settings.held_wait)

    @property
    def record_ttl(self) -> float:
        """How long this agent's records stay believed without a heartbeat."""
        return STALE_HEARTBEATS * self.settings.heartbeat_interval

    @property
    def used_slots(self) -> int:
        return len(self.replicas)

    def record(self) -> AgentRecord:
        return AgentRecord(
            agent_id=self.id,
            slots=self.settings.slots,
            used_slots=self.used_slots,
            runtimes=["process", "docker"] if self.docker else ["process"],
            cpus=self._cpus,
            memory_mib=self._memory_mib,
            gpus=self.gpus.gpus,
            gpus_used=self.gpus.used(),
            ttl=self.record_ttl,
        )

    async def run(self) -> None:
        """Serve until :meth:`shutdown`; then drain every replica and return."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        await self.models.purge()  # left by an earlier run: no replica uses them now
        self.gpus = GpuPool(await asyncio.to_thread(discover, self.settings.gpus))
        await self._forget_previous_life()
        for runtime in (self.runtime, self.docker):
            if runtime is not None and hasattr(runtime, "prepare"):
                await runtime.prepare()
        commands = await serve_agent(
            self.broker, self.id, start=self._on_start, stop=self._on_stop, cancel=self._on_cancel
        )
        await self.holdings.open(self.broker)
        await put_model(self.broker, names.KV_AGENTS, self.id, self.record())
        log.info(
            "agent %s ready (%s runtime, %d slots, GPUs: %s)",
            self.id,
            self.runtime.name,
            self.settings.slots,
            ", ".join(f"{g.id}:{g.type}" for g in self.gpus.gpus) or "none",
        )
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await self._shutdown.wait()
        finally:
            heartbeat.cancel()
            await commands.close()
            await self._drain()
            self.holdings.close()
            with contextlib.suppress(Exception):
                await delete_key(self.broker, names.KV_AGENTS, self.id)
            self.models.close()
            await self.runtime.close()
            if self.docker is not None:
                await self.docker.close()

    def shutdown(self) -> None:
        self._shutdown.set()

    async def _drain(self) -> None:
        for sup in self.replicas.values():
            sup.request_stop("agent shutting down", only_if_idle=False)
        if self._tasks:
            await asyncio.wait(
                self._tasks, timeout=self.settings.stop_grace + self.settings.pull_expires + 5
            )

    async def _fleet_size(self) -> int:
        """Agents with a fresh record, this one included."""
        agents = await read_models(self.broker, names.KV_AGENTS, AgentRecord)
        now = time.time()
        return max(sum(1 for a in agents.values() if a.fresh(now)), 1)

    async def _forget_previous_life(self) -> None:
        """Records left by an earlier run of this agent describe replicas that are gone."""
        with contextlib.suppress(Exception):
            replicas = await read_models(self.broker, names.KV_REPLICAS, ReplicaRecord)
            for key, record in replicas.items():
                if record.agent_id == self.id:
                    await delete_key(self.broker, names.KV_REPLICAS, key)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                for sup in list(self.replicas.values()):
                    await self._publish_record(sup.record, sup)
                await put_model(self.broker, names.KV_AGENTS, self.id, self.record())
            except Exception as exc:
                log.warning("heartbeat failed: %r", exc)

    async def _publish_record(
        self, record: ReplicaRecord, sup: ReplicaSupervisor | None = None
    ) -> None:
        if sup is not None:
            record.in_flight = sup.in_flight
        record.updated_at = time.time()
        record.ttl = self.record_ttl
        await put_model(
            self.broker,
            names.KV_REPLICAS,
            names.replica_key(record.endpoint, record.replica_id),
            record,
        )

    # -- commands --------------------------------------------------------------------------

    async def _on_start(self, cmd: StartReplica) -> tuple[bool, str]:
        if cmd.replica_id in self.replicas:
            return True, "already running"
        if self.used_slots >= self.settings.slots or self._shutdown.is_set():
            return False, "no free slot"
        runtime = self.docker if cmd.spec.image_url else self.runtime
        if runtime is None:
            return False, "no Docker engine on this agent"
        try:
            need = parse_instance_type(cmd.spec.instance_type)
        except ValueError as exc:
            return False, str(exc)
        gpus = self.gpus.take(cmd.replica_id, need)
        if isinstance(gpus, str):
            return False, gpus

        async def changed(record: ReplicaRecord) -> None:
            await self._publish_record(record, sup)

        sup = ReplicaSupervisor(
            replica_id=cmd.replica_id,
            spec=cmd.spec,
            broker=self.broker,
            runtime=runtime,
            settings=self.settings,
            work_dir=self.work_dir,
            models=self.models,
            assets=self.assets,
            on_change=changed,
            gpus=gpus,
            holdings=self.holdings,
        )
        self.replicas[cmd.replica_id] = sup
        if gpus:  # the scaler sees these GPUs taken before it sees the replica
            await put_model(self.broker, names.KV_AGENTS, self.id, self.record())
        await self._publish_record(sup.record, sup)
        task = asyncio.create_task(self._supervise(sup), name=f"replica:{cmd.replica_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True, ""

    async def _supervise(self, sup: ReplicaSupervisor) -> None:
        try:
            await sup.run()
        finally:
            self.replicas.pop(sup.replica_id, None)
            self.gpus.give_back(sup.replica_id)
            # Why a replica failed travels in its events; the record goes either way.
            with contextlib.suppress(Exception):
                await delete_key(
                    self.broker, names.KV_REPLICAS, names.replica_key(sup.spec.name, sup.replica_id)
                )

    async def _on_cancel(self, endpoint: str, request_id: str) -> None:
        """A request was cancelled: if one of this agent's replicas works on it, stop waiting."""
        for sup in self.replicas.values():
            if sup.spec.name == endpoint and sup.cancel(request_id):
                return

    async def _on_stop(self, cmd: StopReplica) -> tuple[bool, str]:
        sup = self.replicas.get(cmd.replica_id)
        if sup is None:
            return True, "not running"
        ok = sup.request_stop(cmd.reason, only_if_idle=cmd.only_if_idle)
        return ok, "" if ok else "busy or starting"
