"""What the agent needs from a replica runtime (``process`` now, ``docker`` next)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.messages import EndpointSpec, GpuInfo

__all__ = ["Launch", "Replica", "Runtime"]


@dataclass(slots=True)
class Launch:
    """Everything a runtime needs to start one replica."""

    replica_id: str
    spec: EndpointSpec
    port: int
    env: dict[str, str] = field(repr=False)
    log_path: Path
    model_dir: Path | None = None
    # The endpoint's registry credential ({"username", "password"}), for image pulls only.
    registry: dict[str, str] | None = field(default=None, repr=False)
    # The GPUs the agent assigned to this replica.
    gpus: list[GpuInfo] = field(default_factory=list)
    # Reports progress (an image pull) as an event of the replica: (type, details).
    report: Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # The endpoint's assets: name -> the cached file (read-only), linked from
    # $OCTOAI_VOLUME_PATH/assets/<name>.
    assets: dict[str, Path] = field(default_factory=dict)


class Replica(Protocol):
    """A started replica: an HTTP server on ``host:port`` until it exits."""

    host: str
    port: int

    @property
    def exit_code(self) -> int | None: ...

    async def wait(self) -> int:
        """Block until the replica exits; its exit code."""
        ...

    async def stop(self, grace: float) -> None:
        """SIGTERM, ``grace`` seconds, then SIGKILL; safe to call twice."""
        ...

    def log_tail(self, lines: int = 20) -> str: ...


class Runtime(Protocol):
    name: str

    async def start(self, launch: Launch) -> Replica: ...

    async def close(self) -> None: ...


def tail_file(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def failure_reason(code: int | None, log: str) -> str:
    """A one-line reason for a replica that exited: Berth's own line if it wrote one."""
    for line in reversed(log.splitlines()):
        if line.startswith("berth: "):
            return line.removeprefix("berth: ")
    last = next((ln.strip() for ln in reversed(log.splitlines()) if ln.strip()), "")
    what = (
        f"exited with code {code}"
        if code is not None and code >= 0
        else f"killed by signal {-(code or 0)}"
    )
    return f"replica {what}" + (f": {last}" if last else "")
