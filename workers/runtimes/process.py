"""The ``process`` runtime: each replica is a local child process.

Replicas are forked from a zygote (see :mod:`workers.zygote`) that has the
model server's imports done, so a cold start costs a fork plus ``setup()``.
With ``use_zygote=False`` each replica is a fresh interpreter instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from workers.runtimes.base import Launch, Replica, tail_file

__all__ = ["ProcessRuntime"]

log = logging.getLogger(__name__)


class ProcessReplica:
    def __init__(self, pid: int, host: str, port: int, log_path: Path, exited: asyncio.Future[int]):
        self.pid = pid
        self.host = host
        self.port = port
        self._log_path = log_path
        self._exited = exited

    @property
    def exit_code(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    async def stop(self, grace: float) -> None:
        if self._exited.done():
            return
        self._signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await self.wait()
        except TimeoutError:
            self._signal(signal.SIGKILL)
            await self.wait()

    def log_tail(self, lines: int = 20) -> str:
        return tail_file(self._log_path, lines)


class _Zygote:
    """The agent's end of the zygote's JSON-lines protocol."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self._forks: dict[str, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._early: dict[int, int] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def spawn(cls) -> _Zygote:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workers.zygote",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        if not line or "ready" not in json.loads(line):
            raise RuntimeError("replica zygote failed to start")
        return cls(proc)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if "pid" in msg:
                fut = self._forks.pop(msg["tag"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg["pid"])
            elif "exit" in msg:
                waiter = self._exits.pop(msg["exit"], None)
                if waiter is None:
                    self._early[msg["exit"]] = msg["code"]
                elif not waiter.done():
                    waiter.set_result(msg["code"])
        # The zygote died: its replicas died with it (PDEATHSIG).
        for fut in list(self._exits.values()):
            if not fut.done():
                fut.set_result(-signal.SIGKILL)
        self._exits.clear()

    async def fork(self, launch: Launch, env: dict[str, str]) -> tuple[int, asyncio.Future[int]]:
        assert self.proc.stdin is not None
        tag = launch.replica_id
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._forks[tag] = fut
        request = {
            "model_dir": str(launch.model_dir),
            "env": env,
            "log": str(launch.log_path),
            "tag": tag,
        }
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        await self.proc.stdin.drain()
        pid = await asyncio.wait_for(fut, timeout=30)
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if pid in self._early:
            exited.set_result(self._early.pop(pid))
        else:
            self._exits[pid] = exited
        return pid, exited

    async def close(self) -> None:
        self._reader.cancel()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.returncode is None:
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class ProcessRuntime:
    name = "process"

    def __init__(self, host: str = "127.0.0.1", *, use_zygote: bool = True):
        self.host = host
        self.use_zygote = use_zygote
        self._zygote: _Zygote | None = None
        self._lock = asyncio.Lock()
        self._reapers: set[asyncio.Task[None]] = set()

    async def _get_zygote(self) -> _Zygote:
        async with self._lock:
            if self._zygote is None or not self._zygote.alive:
                self._zygote = await _Zygote.spawn()
            return self._zygote

    async def prepare(self) -> None:
        """Start the zygote ahead of the first replica (optional)."""
        if self.use_zygote:
            await self._get_zygote()

    def _env(self, launch: Launch) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.update(launch.env)
        env["BERTH_REPLICA_HOST"] = self.host
        env["PYTHONUNBUFFERED"] = "1"
        # The model folder and Berth itself must both be importable.
        berth_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (berth_root, env.get("PYTHONPATH", "")) if p)
        return env

    async def start(self, launch: Launch) -> Replica:
        if launch.model_dir is None:
            raise ValueError("the process runtime runs Python models only (model_id)")
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self._env(launch)
        if self.use_zygote:
            zygote = await self._get_zygote()
            pid, exited = await zygote.fork(launch, env)
            return ProcessReplica(pid, self.host, launch.port, launch.log_path, exited)
        return await self._spawn(launch, env)

    async def _spawn(self, launch: Launch, env: dict[str, str]) -> ProcessReplica:
        """A fresh interpreter per replica (slower start; no zygote)."""
        with launch.log_path.open("ab") as log_fh:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "workers.replica",
                str(launch.model_dir),
                env=env,
                cwd=str(launch.model_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fh,
                stderr=log_fh,
                start_new_session=True,
            )
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def reap() -> None:
            exited.set_result(await proc.wait())

        task = asyncio.create_task(reap())
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)
        return ProcessReplica(proc.pid, self.host, launch.port, launch.log_path, exited)

    async def close(self) -> None:
        if self._zygote is not None:
            await self._zygote.close()
            self._zygote = None
