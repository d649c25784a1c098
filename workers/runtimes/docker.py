"""The ``docker`` runtime: each replica is a container, through the Docker SDK.

- **Pull** when the image is not on the host (always for ``:latest``), with the
  endpoint's registry credential; progress goes to the endpoint's events.
- **Run** with the agent's environment for the replica (``PORT``,
  ``OCTOAI_REPLICA_NAME``, secrets, ``env_overrides``), ``OCTOAI_VOLUME_PATH``
  bound to the endpoint's volume on the host, labels that mark it as this
  agent's, memory and pids limits, ``no-new-privileges``, an init process, and
  exactly the GPUs the agent assigned (a device request with their ids).
- Containers share the host's network (the engine may run without a bridge), so
  the image must listen on ``$PORT``.
- **Stop**: SIGTERM, the grace period, SIGKILL (``docker stop``), then remove.

The SDK is synchronous; every call runs in a thread, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest
from docker.utils import parse_repository_tag

from workers.runtimes.base import Launch, tail_file

__all__ = ["LABEL", "DockerReplica", "DockerRuntime", "PullFailed"]

log = logging.getLogger(__name__)

LABEL = "berth.agent"
VOLUME_IN_CONTAINER = "/octoai/cache"
# Progress of a pull is reported at most this often.
PULL_REPORT_EVERY = 1.0

Report = Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]]


class PullFailed(RuntimeError):
    """The image could not be pulled; the message is the engine's reason, never a password."""


def image_ref(image_url: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference; ``latest`` when it names neither."""
    repo, tag = parse_repository_tag(image_url)
    return repo, tag or "latest"


class DockerReplica:
    def __init__(
        self, runtime: DockerRuntime, container: Container, host: str, port: int, log_path: Path
    ):
        self._runtime = runtime
        self.container = container
        self.host = host
        self.port = port
        self._log_path = log_path
        self._exit: int | None = None
        self._oom = False
        self._waiter: asyncio.Future[int] | None = None
        # The container's output, copied to the replica's log file as it comes, so it
        # outlives the container (and the agent ships it like any replica's).
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._copier = threading.Thread(target=self._copy_logs, daemon=True)
        self._copier.start()

    def _copy_logs(self) -> None:
        try:
            with self._log_path.open("ab") as out:
                for chunk in self.container.logs(stream=True, follow=True):
                    out.write(chunk)
                    out.flush()
        except DockerException as exc:  # the container went away
            log.debug("log copy of %s ended: %r", self.container.name, exc)

    @property
    def exit_code(self) -> int | None:
        return self._exit

    async def _wait(self) -> int:
        result = await asyncio.to_thread(self.container.wait)
        code = int(result.get("StatusCode", -1))
        with contextlib.suppress(DockerException):
            await asyncio.to_thread(self.container.reload)
            self._oom = bool(self.container.attrs.get("State", {}).get("OOMKilled"))
        await asyncio.to_thread(self._copier.join, 5)  # the last lines, before reasons are read
        self._exit = code
        return code

    async def wait(self) -> int:
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiter)

    async def stop(self, grace: float) -> None:
        def stop() -> None:
            with contextlib.suppress(NotFound):
                self.container.stop(timeout=max(1, round(grace)))
            self._copier.join(5)
            with contextlib.suppress(NotFound):
                self.container.remove(force=True)

        try:
            await asyncio.wait_for(asyncio.to_thread(stop), timeout=grace + 30)
        except (TimeoutError, DockerException) as exc:
            log.warning("stopping container %s: %r", self.container.name, exc)

    def log_tail(self, lines: int = 20) -> str:
        text = tail_file(self._log_path, lines)
        if self._oom:
            limit = self._runtime.memory_limit
            text += f"\nberth: killed for running out of memory (container limit {limit})"
        return text


class DockerRuntime:
    """Replicas as containers on the Docker engine at ``base_url`` (None: the environment's)."""

    name = "docker"

    def __init__(
        self,
        agent_id: str,
        *,
        base_url: str | None = None,
        host: str = "127.0.0.1",
        memory_limit: str = "8g",
        pids_limit: int = 4096,
        call_timeout: float = 60.0,
        pull_timeout: float = 1800.0,
    ):
        self.agent_id = agent_id
        self.host = host
        self.memory_limit = memory_limit
        self.pids_limit = pids_limit
        self._call_timeout = call_timeout
        self._pull_timeout = pull_timeout
        self._client = (
            docker.DockerClient(base_url=base_url, timeout=int(call_timeout))
            if base_url
            else docker.from_env(timeout=int(call_timeout))
        )

    async def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        return await asyncio.wait_for(asyncio.to_thread(fn), timeout or self._call_timeout)

    async def ping(self, timeout: float | None = None) -> None:
        await self.call(self._client.ping, timeout)

    async def prepare(self) -> None:
        """Check the engine answers; remove containers an earlier run of this agent left."""
        await self.ping()
        left = await self.call(
            lambda: self._client.containers.list(
                all=True, filters={"label": f"{LABEL}={self.agent_id}"}
            )
        )
        for container in left:
            log.info("removing container %s left by an earlier run", container.name)
            with contextlib.suppress(DockerException):
                await self.call(partial(container.remove, force=True))

    # -- images ----------------------------------------------------------------------------

    async def ensure_image(
        self, image_url: str, registry: dict[str, str] | None, report: Report | None = None
    ) -> None:
        repo, tag = image_ref(image_url)
        ref = f"{repo}@{tag}" if tag.startswith("sha256:") else f"{repo}:{tag}"
        if tag != "latest":
            try:
                await self.call(lambda: self._client.images.get(ref))
                return
            except ImageNotFound:
                pass
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        if report:
            await report("image_pull_started", {"image": image_url})

        def pull() -> None:
            auth = (
                {"username": registry["username"], "password": registry["password"]}
                if registry
                else None
            )
            layers: dict[str, tuple[int, int]] = {}
            last = 0.0
            for line in self._client.api.pull(
                repo, tag=tag, stream=True, decode=True, auth_config=auth
            ):
                if "error" in line:
                    raise PullFailed(str(line["error"]))
                detail = line.get("progressDetail") or {}
                if line.get("id") and detail.get("total"):
                    layers[line["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
                now = time.monotonic()
                if report and layers and now - last >= PULL_REPORT_EVERY:
                    last = now
                    done = sum(c for c, _ in layers.values())
                    total = sum(t for _, t in layers.values())
                    asyncio.run_coroutine_threadsafe(
                        report(
                            "image_pull_progress",
                            {"image": image_url, "bytes": done, "total_bytes": total},
                        ),
                        loop,
                    )

        try:
            await self.call(pull, self._pull_timeout)
        except TimeoutError:
            raise PullFailed(f"pulling {image_url} took over {self._pull_timeout:g} s") from None
        except APIError as exc:
            raise PullFailed(f"cannot pull {image_url}: {exc.explanation or exc}") from exc
        except PullFailed as exc:
            raise PullFailed(f"cannot pull {image_url}: {exc}") from exc
        except DockerException as exc:
            raise PullFailed(f"cannot pull {image_url}: {exc}") from exc
        if report:
            await report(
                "image_pulled",
                {"image": image_url, "pull_s": round(time.monotonic() - started, 2)},
            )

    # -- replicas --------------------------------------------------------------------------

    async def start(self, launch: Launch) -> DockerReplica:
        spec = launch.spec
        image = spec.image_url
        if not image:
            raise ValueError("the docker runtime runs images (image_url)")
        await self.ensure_image(image, launch.registry, launch.report)
        env = {
            k: v
            for k, v in launch.env.items()
            if k not in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
        }
        volumes: list[str] = []  # host:container:mode (one host file may mount twice)
        host_volume = launch.env.get("OCTOAI_VOLUME_PATH")
        if host_volume:
            volumes.append(f"{host_volume}:{VOLUME_IN_CONTAINER}:rw")
            env["OCTOAI_VOLUME_PATH"] = VOLUME_IN_CONTAINER
        for asset_name, cached in launch.assets.items():
            # Each asset's cached file, read-only, inside the volume's assets folder.
            target = f"{VOLUME_IN_CONTAINER}/assets/{asset_name}"
            volumes.append(f"{cached}:{target}:ro")
        devices = (
            [
                DeviceRequest(
                    device_ids=[g.uuid or g.id for g in launch.gpus], capabilities=[["gpu"]]
                )
            ]
            if launch.gpus
            else []
        )
        labels = {
            LABEL: self.agent_id,
            "berth.endpoint": spec.name,
            "berth.replica": launch.replica_id,
        }

        def run() -> Container:
            return self._client.containers.run(
                image,
                detach=True,
                name=f"berth-{spec.name}-{launch.replica_id}",
                environment=env,
                labels=labels,
                network_mode="host",
                volumes=volumes,
                device_requests=devices,
                mem_limit=self.memory_limit,
                pids_limit=self.pids_limit,
                security_opt=["no-new-privileges"],
                init=True,
            )

        try:
            container = await self.call(run)
        except APIError as exc:
            raise RuntimeError(
                f"the engine refused the container: {exc.explanation or exc}"
            ) from exc
        except DockerException as exc:
            raise RuntimeError(f"the engine failed: {exc}") from exc
        return DockerReplica(self, container, self.host, launch.port, launch.log_path)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._client.close)
