"""The ``process`` runtime: each replica is a local child process.

Replicas are forked from a zygote (see :mod:`workers.zygote`) that has the
model server's imports done, so a cold start costs a fork plus ``setup()``.
With ``use_zygote=False`` each replica is a fresh interpreter instead.

Each replica is sandboxed before the model's code runs (:mod:`workers.sandbox`):
it reads the system, Python, Berth's replica code and its own model folder,
writes only its own scratch folder (``HOME`` and ``TMPDIR``, removed when it
ends), and runs as a uid of its own when the agent is root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from workers.environments import Environments
from workers.runtimes.base import Launch, Replica, tail_file
from workers.sandbox import Policy, SandboxError, apply, landlock_abi, read_paths_for
from workers.service import MODEL_SITE_ENV

__all__ = ["ProcessRuntime"]

log = logging.getLogger(__name__)


BERTH_ROOT = Path(__file__).resolve().parents[2]
# The uids an agent gives its replicas, counted from SandboxSettings.uid_base.
UID_RANGE = 65536


@dataclass(slots=True)
class SandboxSettings:
    """How the agent sandboxes its process replicas (AgentSettings: sandbox, replica_*)."""

    mode: Literal["auto", "required", "off"] = "auto"
    # Berth's data directory: no replica may read or write it (but for its own model
    # and scratch folders inside it).
    data_dir: Path | None = None
    # Where replicas' scratch folders are made.
    scratch_dir: Path | None = None
    uid_base: int = 0  # root agents: a uid per replica from here; 0: uid 0, no capabilities
    writable: tuple[str, ...] = ()
    # Filled in by ProcessRuntime.prepare().
    landlock_abi: int = field(default=0)


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
        # Replicas fork from it and inherit what it was started with: not the agent's
        # environment (its token, NATS credentials), only what replicas may see.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workers.zygote",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_base_env(),
            cwd=str(BERTH_ROOT),
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

    async def fork(
        self, launch: Launch, env: dict[str, str], policy: Policy | None
    ) -> tuple[int, asyncio.Future[int]]:
        assert self.proc.stdin is not None
        tag = launch.replica_id
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._forks[tag] = fut
        request = {
            "model_dir": str(launch.model_dir),
            "env": env,
            "log": str(launch.log_path),
            "tag": tag,
            "sandbox": policy.to_json() if policy else None,
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


def _base_env() -> dict[str, str]:
    """The agent's environment less Berth's own settings (tokens, URLs, credentials)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BERTH_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


def _traversable(path: Path, up_to: Path | None) -> None:
    """Let other uids pass through ``path``'s parents (not list them), up to ``up_to``."""
    parent = path.parent
    while up_to is not None and parent != parent.parent:
        os.chmod(parent, stat.S_IMODE(os.stat(parent).st_mode) | 0o111)
        if parent == up_to:
            break
        parent = parent.parent


def _open_to_replicas(model_dir: Path, up_to: Path | None) -> None:
    """Let replicas of another uid read a model folder (root agents only)."""
    for root, _, files in os.walk(model_dir):
        os.chmod(root, 0o755)
        for name in files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, stat.S_IMODE(mode) | 0o444)
    _traversable(model_dir, up_to)


class ProcessRuntime:
    name = "process"

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        use_zygote: bool = True,
        sandbox: SandboxSettings | None = None,
        environments: Environments | None = None,
    ):
        self.host = host
        self.environments = environments
        self.use_zygote = use_zygote
        self.sandbox = sandbox or SandboxSettings()
        if self.sandbox.mode != "off":
            self.sandbox.landlock_abi = landlock_abi()
        self._zygote: _Zygote | None = None
        self._lock = asyncio.Lock()
        self._reapers: set[asyncio.Task[None]] = set()
        self._uids: set[int] = set()
        self._opened: set[Path] = set()

    async def _get_zygote(self) -> _Zygote:
        async with self._lock:
            if self._zygote is None or not self._zygote.alive:
                self._zygote = await _Zygote.spawn()
            return self._zygote

    async def prepare(self) -> None:
        """Check the sandbox and start the zygote ahead of the first replica."""
        box = self.sandbox
        if box.mode == "off":
            log.warning("sandbox off (BERTH_SANDBOX=off): replicas can read what the agent can")
        elif box.landlock_abi == 0:
            log.warning(
                "this kernel has no Landlock: process replicas are %s (docs/secrets.md)",
                "refused" if box.mode == "required" else "NOT isolated from the host's files",
            )
        else:
            log.info(
                "replicas sandboxed: Landlock ABI %d%s",
                box.landlock_abi,
                f", a uid each from {box.uid_base}"
                if self._drops_uid
                else ", uid 0 with no capabilities"
                if os.geteuid() == 0
                else "",
            )
        if self.use_zygote:
            await self._get_zygote()

    @property
    def _drops_uid(self) -> bool:
        return os.geteuid() == 0 and self.sandbox.uid_base > 0 and self.sandbox.mode != "off"

    def _policy(
        self, launch: Launch, scratch: Path, uid: int | None, site: Path | None = None
    ) -> Policy | None:
        box = self.sandbox
        if box.mode == "off":
            return None
        use_landlock = box.landlock_abi > 0
        if box.mode == "required" and not use_landlock:
            raise SandboxError("BERTH_SANDBOX=required, and this kernel has no Landlock")
        assert launch.model_dir is not None
        read, list_only = read_paths_for(BERTH_ROOT)
        if box.data_dir is not None:
            data = box.data_dir.resolve()
            for path in (*read, *box.writable):
                if data.is_relative_to(Path(path).resolve()):
                    raise SandboxError(
                        f"Berth's data directory {data} lies inside {path}, which replicas may "
                        "use: move BERTH_DATA_DIR out of it"
                    )
        volume = launch.env.get("OCTOAI_VOLUME_PATH")
        return Policy(
            read=(
                *read,
                str(launch.model_dir),
                *([str(site)] if site else []),
                *(str(path) for path in launch.assets.values()),
            ),
            write=(str(scratch), *([volume] if volume else []), *box.writable),
            list_only=list_only,
            uid=uid,
            landlock=use_landlock,
        )

    def _env(self, launch: Launch, scratch: Path) -> dict[str, str]:
        env = _base_env()
        env.update(launch.env)
        env["BERTH_REPLICA_HOST"] = self.host
        env["PYTHONUNBUFFERED"] = "1"
        env["HOME"] = env["TMPDIR"] = str(scratch)
        return env

    def _take_uid(self) -> int | None:
        if not self._drops_uid:
            return None
        offset = next(i for i in range(UID_RANGE) if self.sandbox.uid_base + i not in self._uids)
        uid = self.sandbox.uid_base + offset
        self._uids.add(uid)
        return uid

    def _scratch(self, launch: Launch, uid: int | None) -> Path:
        base = self.sandbox.scratch_dir or launch.log_path.parent / "scratch"
        base.mkdir(parents=True, exist_ok=True, mode=0o711)
        scratch = base / launch.replica_id
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if uid is not None:
            os.chown(scratch, uid, uid)
            if launch.model_dir is not None and launch.model_dir not in self._opened:
                _open_to_replicas(launch.model_dir, self.sandbox.data_dir)
                self._opened.add(launch.model_dir)
            _traversable(scratch, self.sandbox.data_dir)
            volume = launch.env.get("OCTOAI_VOLUME_PATH")
            if volume:  # shared by the endpoint's replicas, each its own uid
                os.chmod(volume, 0o1777)
                _traversable(Path(volume), self.sandbox.data_dir)
        return scratch

    async def start(self, launch: Launch) -> Replica:
        if launch.model_dir is None:
            raise ValueError("the process runtime runs Python models only (model_id)")
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        site = None  # the model's own packages (requirements.txt), installed once per agent
        if self.environments is not None:
            site = await self.environments.ensure(launch.model_dir, launch.report)
        uid = self._take_uid()
        try:
            scratch = self._scratch(launch, uid)
            if site is not None and uid is not None and site not in self._opened:
                _open_to_replicas(site, self.sandbox.data_dir)
                self._opened.add(site)
            policy = self._policy(launch, scratch, uid, site)
            env = self._env(launch, scratch)
            if site is not None:
                env[MODEL_SITE_ENV] = str(site)
            if self.use_zygote:
                zygote = await self._get_zygote()
                pid, exited = await zygote.fork(launch, env, policy)
            else:
                pid, exited = await self._spawn(launch, env, policy)
        except BaseException:
            self._uids.discard(uid)
            raise

        def ended(_: asyncio.Future[int]) -> None:
            self._uids.discard(uid)
            shutil.rmtree(scratch, ignore_errors=True)

        exited.add_done_callback(ended)
        return ProcessReplica(pid, self.host, launch.port, launch.log_path, exited)

    async def _spawn(
        self, launch: Launch, env: dict[str, str], policy: Policy | None
    ) -> tuple[int, asyncio.Future[int]]:
        """A fresh interpreter per replica (slower start; no zygote)."""

        def sandboxed() -> None:
            if policy is not None:
                apply(policy)

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
                preexec_fn=sandboxed,
            )
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def reap() -> None:
            exited.set_result(await proc.wait())

        task = asyncio.create_task(reap())
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)
        return proc.pid, exited

    async def close(self) -> None:
        if self._zygote is not None:
            await self._zygote.close()
            self._zygote = None
