"""One replica's whole life: launch, wait healthy, serve from the queue, restart, drain.

The supervisor owns the replica's pull loops, so it alone knows whether the
replica is busy: a stop that asks for an idle replica is refused while a
request is in flight, which makes "never stop a busy replica" hold by
construction rather than by the scaler's (older) view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import orjson

from broker.artifacts import ModelCache
from broker.connection import Broker
from broker.events import publish_event
from broker.pull import Holdings
from broker.secrets import ReplicaSecrets, fetch_replica_secrets
from shared.errors import BerthError
from shared.messages import EndpointSpec, GpuInfo, ReplicaRecord, ReplicaState
from shared.metrics import (
    COLD_STARTS,
    RESTARTS,
    RUNNING,
)
from shared.settings import AgentSettings
from workers import tracing
from workers.assets import AssetCache, link_assets
from workers.gpus import visible_devices_env
from workers.http import ReplicaClient
from workers.logship import LogShipper
from workers.request_path import RequestPath
from workers.runtimes.base import Launch, Replica, Runtime, failure_reason
from workers.service import REPLICA_KEY_ENV

__all__ = ["ReplicaSupervisor", "StartFailed"]

log = logging.getLogger(__name__)

# A replica that was ready and then keeps failing is restarted with this backoff,
# and given up after this many failures in a row.
RESTART_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
STABLE_AFTER = 60.0
# While a replica starts, its health check is polled at most this far apart.
HEALTH_POLL_MAX = 0.05


# Cog's /health-check answers 200 all along and says in its body whether it is ready.
_COG_NOT_READY = (b'"STARTING"', b'"SETUP_FAILED"', b'"DEFUNCT"')


def _cog_not_ready(body: bytes) -> bool:
    """A 200 from a Cog container that is still in setup (or failed it) is not ready."""
    if not body or len(body) > 4096 or b'"status"' not in body:
        return False
    try:
        status = orjson.loads(body).get("status")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return f'"{status}"'.encode() in _COG_NOT_READY


class StartFailed(Exception):
    """The replica never became healthy; ``str(exc)`` is the reason shown to users."""


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ReplicaSupervisor:
    def __init__(
        self,
        *,
        replica_id: str,
        spec: EndpointSpec,
        broker: Broker,
        runtime: Runtime,
        settings: AgentSettings,
        work_dir: Path,
        models: ModelCache,
        on_change: Callable[[ReplicaRecord], Coroutine[Any, Any, None]],
        gpus: list[GpuInfo] | None = None,
        holdings: Holdings | None = None,
        assets: AssetCache | None = None,
    ):
        self.replica_id = replica_id
        self.spec = spec
        self._broker = broker
        self._runtime = runtime
        self._settings = settings
        self._work_dir = work_dir
        self._models = models
        self._held_model: str | None = None
        self._assets = assets
        self._held_assets: dict[str, Path] = {}  # name -> cached file, held while it runs
        self._key = ""  # the running replica's key (REPLICA_KEY_HEADER)
        self._holdings = holdings
        self._on_change = on_change
        self.gpus = gpus or []
        now = time.time()
        self.record = ReplicaRecord(
            endpoint=spec.name,
            replica_id=replica_id,
            agent_id=settings.agent_id,
            state=ReplicaState.STARTING,
            started_at=now,
            digest=spec.replica_digest(),
            busy_s=0.0,
        )
        self._counted: ReplicaState | None = None  # its state in berth_agent_replicas
        self._stop = asyncio.Event()
        self._broken = asyncio.Event()
        self._broken_reason = ""
        self._replica: Replica | None = None
        # Secret values this replica was given: never repeated in a reason or an event.
        self._secret_values: list[str] = []
        self._background: set[asyncio.Task[None]] = set()
        self.path = RequestPath(
            broker=broker,
            spec=spec,
            replica_id=replica_id,
            settings=settings,
            record=self.record,
            holdings=holdings,
            stopping=self._stop,
            broken=self._broken,
            healthy=self._healthy,
            break_=self._break,
        )

    @property
    def in_flight(self) -> int:
        return self.path.in_flight

    # -- control ---------------------------------------------------------------------------

    def request_stop(self, reason: str, *, only_if_idle: bool) -> bool:
        """Ask the replica to drain and stop; refused if ``only_if_idle`` and it is busy or starting."""
        if only_if_idle and (self.in_flight > 0 or self.record.state is not ReplicaState.READY):
            return False
        if self._stop.is_set():
            return True
        log.info("stopping replica %s of %s: %s", self.replica_id, self.spec.name, reason)
        self._stop.set()
        # Report it at once, so the scaler stops counting this replica as capacity.
        self.record.state = ReplicaState.STOPPING
        self.record.reason = reason
        task = asyncio.create_task(self._on_change(self.record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    def cancel(self, request_id: str) -> bool:
        """Stop waiting for the replica's answer to ``request_id`` (its connection is closed)."""
        return self.path.cancel(request_id)

    def _redact(self, text: str) -> str:
        """A replica's log tail may print its secrets; reasons and events never do."""
        for value in self._secret_values:
            text = text.replace(value, "[redacted]")
        return text

    async def _set_state(self, state: ReplicaState, reason: str | None = None) -> None:
        if self._stop.is_set() and state in (ReplicaState.STARTING, ReplicaState.READY):
            state, reason = ReplicaState.STOPPING, self.record.reason  # a stop was asked: say so
        if self._counted is not None:
            RUNNING.labels(self.spec.name, self._counted.value).dec()
        RUNNING.labels(self.spec.name, state.value).inc()
        self._counted = state
        self.record.state = state
        self.record.reason = self._redact(reason) if reason else reason
        self.record.in_flight = self.in_flight
        self.record.updated_at = time.time()
        if state is ReplicaState.READY:
            self.record.ready_at = self.record.updated_at
        await self._on_change(self.record)

    async def _event(self, type_: str, *, warning: bool = False, **details: object) -> None:
        await publish_event(
            self._broker,
            "replica",
            self.spec.name,
            type_,
            level="warning" if warning else "normal",
            replica_id=self.replica_id,
            agent_id=self._settings.agent_id,
            **{k: self._redact(v) if isinstance(v, str) else v for k, v in details.items()},
        )

    # -- the life ------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self._work_dir / "logs" / self.spec.name / f"{self.replica_id}.log"

    @property
    def key_path(self) -> Path:
        """The running replica's key, for an operator on this host who calls it directly
        (``curl -H "x-berth-replica-key: $(cat …)"``); inside the data directory, which no
        replica can read."""
        return self._work_dir / "replica-keys" / self.replica_id

    def _keep_key(self) -> None:
        self.key_path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._key)

    async def run(self) -> None:
        """Run until stopped or given up; never raises (failures become events)."""
        shipper = LogShipper(
            self._broker, self.spec.name, self.replica_id, self.log_path, self._redact
        )
        shipping = asyncio.create_task(shipper.run())
        try:
            await self._run()
        finally:
            shipper.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shipping, timeout=10)

    async def _run(self) -> None:
        ever_ready = False
        failures = 0
        try:
            while not self._stop.is_set():
                self._broken.clear()
                launched = time.monotonic()
                try:
                    replica, client = await self._launch()
                except Exception as exc:
                    if self._stop.is_set():  # stopped on purpose while starting: no failure
                        break
                    COLD_STARTS.labels(self.spec.name, "failed").observe(
                        time.monotonic() - launched
                    )
                    # Every way a start can fail is a start failure, reported as one (the
                    # scaler's back-off hangs on that event), never a crash of this loop.
                    reason = (
                        str(exc)
                        if isinstance(exc, StartFailed)
                        else f"the agent could not start the replica: {type(exc).__name__}: {exc}"
                    )
                    if not isinstance(exc, StartFailed):
                        log.warning("replica %s: %s", self.replica_id, reason, exc_info=exc)
                    await self._event(
                        "replica_start_failed",
                        warning=True,
                        reason=reason,
                        digest=self.record.digest,
                    )
                    if not ever_ready or failures >= len(RESTART_BACKOFF):
                        await self._set_state(ReplicaState.FAILED, reason)
                        return
                    failures += 1
                    await self._pause(RESTART_BACKOFF[failures - 1])
                    continue
                ever_ready = True
                COLD_STARTS.labels(self.spec.name, "ready").observe(time.monotonic() - launched)
                if tracing.ENABLED:
                    tracing.record(
                        "replica start",
                        time.time() - (time.monotonic() - launched),
                        {"berth.endpoint": self.spec.name, "berth.replica": self.replica_id},
                    )
                try:
                    await self._set_state(ReplicaState.READY)
                    await self._event(
                        "replica_ready", startup_s=round(time.time() - self.record.started_at, 3)
                    )
                    ready_since = time.monotonic()
                    await self._serve(replica, client)
                finally:
                    client.close()
                    await replica.stop(self._settings.stop_grace)
                if self._stop.is_set():
                    break
                reason = self._broken_reason or failure_reason(
                    replica.exit_code, replica.log_tail()
                )
                if time.monotonic() - ready_since > STABLE_AFTER:
                    failures = 0  # it served well for a while: this is not a crash loop
                failures += 1
                self.record.restarts += 1
                RESTARTS.labels(self.spec.name).inc()
                await self._event(
                    "replica_restarting", warning=True, reason=reason, restarts=self.record.restarts
                )
                if failures > len(RESTART_BACKOFF):
                    await self._set_state(ReplicaState.FAILED, reason)
                    return
                await self._set_state(ReplicaState.STARTING, reason)
                await self._pause(RESTART_BACKOFF[failures - 1])
        except Exception as exc:  # a bug or a lost broker: report it, never leak the task
            log.exception("replica %s supervisor crashed", self.replica_id)
            with contextlib.suppress(Exception):
                await self._set_state(ReplicaState.FAILED, f"agent error: {exc!r}")
        finally:
            if self._replica is not None:
                with contextlib.suppress(Exception):
                    await self._replica.stop(self._settings.stop_grace)
            if self._held_model is not None:
                self._models.release(self._held_model)
                self._held_model = None
            if self._assets is not None:
                for ref in self.spec.assets:
                    if self._held_assets.pop(ref.name, None) is not None:
                        self._assets.release(ref.sha256)
            self.key_path.unlink(missing_ok=True)
            if self._counted is not None:
                RUNNING.labels(self.spec.name, self._counted.value).dec()
                self._counted = None
            with contextlib.suppress(Exception):
                await self._event("replica_stopped")

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _launch(self) -> tuple[Replica, ReplicaClient]:
        spec = self.spec
        started = time.time()
        model_dir: Path | None = None
        if spec.model_id:
            try:
                model_dir = await self._hold_model(spec.model_id)
            except BerthError as exc:
                raise StartFailed(exc.message) from exc
        assets = await self._hold_assets()
        secrets = await self._secrets()
        host = self._settings.replica_host
        port = free_port(host)
        volume = self._work_dir / "volumes" / spec.name
        volume.mkdir(parents=True, exist_ok=True)
        if spec.assets and self._runtime.name == "process":
            # A container mounts each file itself (workers/runtimes/docker.py).
            await asyncio.to_thread(link_assets, volume, assets)
        env = dict(spec.env_overrides)
        env.update(secrets.env if secrets else {})
        env.update(visible_devices_env(self.gpus))  # its own GPUs, or none at all
        self._key = token_urlsafe(24)
        self._keep_key()
        env.update(
            PORT=str(port),
            OCTOAI_REPLICA_NAME=f"{spec.name}-{self.replica_id}",
            OCTOAI_VOLUME_PATH=str(volume),
        )
        env[REPLICA_KEY_ENV] = self._key
        launch = Launch(
            replica_id=self.replica_id,
            spec=spec,
            port=port,
            env=env,
            model_dir=model_dir,
            registry=secrets.registry if secrets else None,
            gpus=self.gpus,
            report=self._report,
            log_path=self.log_path,
            assets=assets,
        )
        try:
            replica = await self._runtime.start(launch)
        except (OSError, ValueError, RuntimeError) as exc:
            raise StartFailed(
                f"{self._runtime.name} runtime could not start the replica: {exc}"
            ) from exc
        self._replica = replica
        self.record.url = f"http://{replica.host}:{replica.port}"
        client = ReplicaClient(replica.host, replica.port, max_idle=1, key=self._key)
        try:
            await self._wait_healthy(replica, client, started)
        except BaseException:
            client.close()
            await replica.stop(self._settings.stop_grace)
            raise
        return replica, client

    async def _hold_model(self, model_id: str) -> Path:
        """The model's folder, held (not removed) until this supervisor ends."""
        if self._held_model is None:
            path = await self._models.acquire(model_id)
            self._held_model = model_id
            return path
        return await self._models.get(model_id)

    async def _hold_assets(self) -> dict[str, Path]:
        """The endpoint's assets in this agent's cache, held until this supervisor ends."""
        if not self.spec.assets:
            return {}
        if self._assets is None:
            raise StartFailed("this agent has no asset cache")
        for ref in self.spec.assets:
            if ref.name in self._held_assets:
                continue
            try:
                self._held_assets[ref.name] = await self._assets.acquire(ref, self._report)
            except BerthError as exc:
                raise StartFailed(exc.message) from exc
        return dict(self._held_assets)

    async def _report(self, type_: str, details: dict[str, Any]) -> None:
        await self._event(type_, **details)

    async def _secrets(self) -> ReplicaSecrets | None:
        """The endpoint's secrets and registry credential, asked of the API for this start."""
        spec = self.spec
        if not spec.container_secrets and not spec.registry_credential:
            return None
        token = self._settings.agent_token
        try:
            found = await fetch_replica_secrets(
                self._broker,
                token.get_secret_value() if token else None,
                spec.name,
                timeout=self._settings.nats_timeout * 2,
            )
        except BerthError as exc:
            raise StartFailed(exc.message) from exc
        self._secret_values = sorted(found.values(), key=len, reverse=True)
        return found

    async def _wait_healthy(self, replica: Replica, client: ReplicaClient, started: float) -> None:
        budget = self._settings.startup_budget
        path = self.spec.health_check_path
        delay = 0.005
        exited = asyncio.ensure_future(replica.wait())
        try:
            while True:
                if exited.done():
                    raise StartFailed(failure_reason(exited.result(), replica.log_tail()))
                if await self._healthy(client, timeout=2.0):
                    return
                if self._stop.is_set():
                    raise StartFailed("stopped before it became ready")
                if time.time() - started > budget:
                    raise StartFailed(f"health check {path} did not answer 200 within {budget:g} s")
                await asyncio.wait([exited], timeout=delay)
                delay = min(delay * 1.5, HEALTH_POLL_MAX)  # a local GET is cheap; waiting is not
        finally:
            exited.cancel()

    async def _serve(self, replica: Replica, client: ReplicaClient) -> None:
        data = ReplicaClient(
            replica.host, replica.port, max_idle=self.spec.concurrency_per_replica, key=self._key
        )
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(self.spec.concurrency_per_replica):
                    tg.create_task(self.path.slot(data, client))
                tg.create_task(self._watch(replica, client))
        finally:
            data.close()

    def _break(self, reason: str) -> None:
        if not self._broken.is_set():
            self._broken_reason = reason
            self._broken.set()

    async def _healthy(self, client: ReplicaClient, timeout: float | None = None) -> bool:
        """One health check: a 200 from ``health_check_path``; anything else, or no answer, is not."""
        try:
            resp = await client.request(
                "GET",
                self.spec.health_check_path,
                [],
                b"",
                timeout or self._settings.health_interval,
            )
        except (ConnectionError, TimeoutError):
            return False
        return resp.status == 200 and not _cog_not_ready(resp.body)

    async def _watch(self, replica: Replica, client: ReplicaClient) -> None:
        """Health checks and exit watch while serving; breaks the replica when it fails."""
        exited = asyncio.ensure_future(replica.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        broken = asyncio.ensure_future(self._broken.wait())
        failures = 0
        try:
            while True:
                done, _ = await asyncio.wait(
                    [exited, stop, broken],
                    timeout=self._settings.health_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stop in done or broken in done:
                    return
                if exited in done:
                    self._break(failure_reason(exited.result(), replica.log_tail()))
                    return
                failures = 0 if await self._healthy(client) else failures + 1
                if failures >= self._settings.health_failures_to_restart:
                    self._break(f"{failures} consecutive failed health checks")
                    # In-flight work on a hung replica is handed back to the queue.
                    await replica.stop(self._settings.stop_grace)
                    return
        finally:
            for fut in (exited, stop, broken):
                fut.cancel()
