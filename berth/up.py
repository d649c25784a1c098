"""``berth up``: the embedded default on one machine.

Starts a ``nats-server`` with JetStream on the data directory, then the API, the
scaler and one fleet agent as child processes; prints the API URL and admin
token. It supervises them as a service manager would: a child that dies is
started again after a back-off (1 s, doubling to 30 s; reset once it has run a
minute), while the others keep serving. On Ctrl-C it stops them in order (API,
scaler, agent — which drains its replicas — then NATS). State lives in
``BERTH_DATA_DIR``; running it again keeps endpoints, models and queued requests.

The nats-server accepts only clients that show a token (``nats-token`` in the
data directory, mode 0600): a model on this host cannot reach the queue.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from berth.local import LocalNats, stop_process, wait_until
from shared.models import Scope
from shared.proc import die_with_parent
from shared.settings import UpSettings
from shared.tokens import bootstrap_token, parse

__all__ = ["main"]


def _write_private(path: Path, text: str, *, replace: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


@dataclass(slots=True)
class Tokens:
    """What ``berth up`` passes on: the admin token (and whether it is new), the agent's."""

    admin: str
    admin_is_new: bool
    agent: str
    # Set when the admin token is a static one (BERTH_ADMIN_TOKEN, or an older berth up's).
    static_admin: str | None


def bootstrap_tokens(settings: UpSettings, data_dir: Path) -> Tokens:
    """The tokens, made in the database on first start and kept in 0600 files.

    The admin token is printed once, when it is made; later starts point at its file.
    """
    static = os.environ.get("BERTH_ADMIN_TOKEN") or None
    admin_file, agent_file = data_dir / "admin-token", data_dir / "agent-token"
    url = settings.database_url or f"sqlite:///{data_dir / 'berth.db'}"
    new = False
    if static:
        admin = static
    elif admin_file.exists():
        admin = admin_file.read_text().strip()
        if parse(admin) is None:  # made by an older berth up, before tokens lived in the DB
            static = admin
    else:
        admin = bootstrap_token(url, "bootstrap admin (berth up)", [Scope.ADMIN])
        _write_private(admin_file, admin)
        new = True
    if os.environ.get("BERTH_AGENT_TOKEN"):
        agent = os.environ["BERTH_AGENT_TOKEN"]
    elif agent_file.exists():
        agent = agent_file.read_text().strip()
    else:
        agent = bootstrap_token(url, f"agent {settings.agent_id} (berth up)", [Scope.AGENT])
        _write_private(agent_file, agent)
    return Tokens(admin=admin, admin_is_new=new, agent=agent, static_admin=static)


def wait_for_api(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"berth: the API exited with code {proc.returncode} during start-up")
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200

    try:
        wait_until(healthy, timeout, "the API to become healthy")
    except TimeoutError as exc:
        raise SystemExit(f"berth: {exc}") from None


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only `berth up`, which stops children in
    # order; PDEATHSIG stops them if `berth up` itself is killed.
    return subprocess.Popen(args, env=env, start_new_session=True, preexec_fn=die_with_parent)


def _nats_token(data_dir: Path) -> str:
    path = data_dir / "nats-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    _write_private(path, token)
    return token


# A crashed child is started again after this back-off, doubling up to the cap; the
# back-off starts over once a child has run for STEADY seconds.
BACKOFF, BACKOFF_MAX, STEADY = 1.0, 30.0, 60.0


@dataclass(slots=True)
class Child:
    """One supervised process of `berth up`."""

    name: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF
    due: float | None = None  # when a crashed child starts again

    def start(self) -> None:
        self.proc = _spawn(self.args, self.env)
        self.started_at = time.monotonic()
        self.due = None

    def check(self, now: float) -> None:
        """Notice an exit and schedule the restart; start it when due."""
        if self.due is not None:
            if now >= self.due:
                self.restarts += 1
                print(
                    f"berth: starting {self.name} again (restart {self.restarts})",
                    file=sys.stderr,
                    flush=True,
                )
                self.start()
            return
        if self.proc is None or self.proc.poll() is None:
            return
        if now - self.started_at >= STEADY:
            self.backoff = BACKOFF
        print(
            f"berth: {self.name} exited with code {self.proc.returncode}; "
            f"starting it again in {self.backoff:g} s (the others keep serving)",
            file=sys.stderr,
            flush=True,
        )
        self.due = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def stop(self, grace: float) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=grace)


def main(settings: UpSettings | None = None) -> None:
    settings = settings or UpSettings()
    os.umask(0o077)  # what Berth writes is its own: the database, keys, tokens, logs
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = bootstrap_tokens(settings, data_dir)
    api_port = settings.port
    url = settings.public_url or f"http://{settings.host}:{api_port}"

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    children: list[Child] = []
    nats = LocalNats(
        data_dir / "nats",
        settings.nats_port or None,
        log=data_dir / "nats-server.log",
        token=_nats_token(data_dir),
    )
    nats_backoff = BACKOFF
    try:
        try:
            nats.start(start_new_session=True, preexec_fn=die_with_parent)
        except (TimeoutError, RuntimeError, FileNotFoundError) as exc:
            raise SystemExit(f"berth: {exc}") from None
        _write_private(data_dir / "nats-url", nats.url, replace=True)
        env = dict(os.environ)
        if tokens.static_admin:
            env["BERTH_ADMIN_TOKEN"] = tokens.static_admin
        env.update(
            BERTH_DATA_DIR=str(data_dir),
            BERTH_NATS_URL=nats.url,
            BERTH_AGENT_TOKEN=tokens.agent,
            BERTH_PORT=str(api_port),
            BERTH_HOST=settings.host,
            BERTH_CALLBACK_ALLOW_PRIVATE=str(settings.callback_allow_private).lower(),
        )
        berth = [sys.executable, "-m", "berth.cli"]
        # The scaler's and the agent's Prometheus metrics on the two ports after the API's
        # (loopback), unless BERTH_METRICS_PORT says otherwise.
        metrics = {}
        children = []
        for offset, name in enumerate(("api", "scaler", "agent")):
            own = dict(env)
            if name != "api" and "BERTH_METRICS_PORT" not in env:
                own["BERTH_METRICS_PORT"] = str(api_port + offset)
                metrics[name] = f"http://127.0.0.1:{api_port + offset}/metrics"
            children.append(Child(name, [*berth, name], own))
        for child in children:
            child.start()
        assert children[0].proc is not None
        wait_for_api(url, children[0].proc)
        (data_dir / "api-url").write_text(url + "\n")
        token_file = data_dir / "admin-token"
        shown = (
            f"{tokens.admin}\n               (shown this once; also kept in {token_file}, mode 0600)"
            if tokens.admin_is_new
            else f"in {token_file}"
        )
        callbacks = (
            "\n  callbacks:   may reach this host and private addresses "
            "(BERTH_CALLBACK_ALLOW_PRIVATE=false refuses them)"
            if settings.callback_allow_private
            else ""
        )
        scrape = "".join(f", {name} {where}" for name, where in metrics.items())
        print(
            f"\nBerth is up.\n  API:         {url}\n  console:     {url}/console/\n"
            f"  admin token: {shown}\n"
            f"  metrics:     {url}/metrics (a metrics or admin token){scrape}\n"
            f"  data dir:    {data_dir}{callbacks}\n\n"
            f"  export BERTH_URL={url} BERTH_TOKEN=$(cat {token_file})\n"
            f"Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping:
            now = time.monotonic()
            for child in children:
                child.check(now)
            if nats.proc is not None and nats.proc.poll() is not None:
                # Its store is on disk: streams, jobs and queued requests come back with it.
                print(
                    f"berth: nats-server exited with code {nats.proc.returncode}; "
                    f"starting it again in {nats_backoff:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                _pause(nats_backoff, lambda: stopping)
                nats_backoff = min(nats_backoff * 2, BACKOFF_MAX)
                if not stopping:
                    try:
                        nats.start(start_new_session=True, preexec_fn=die_with_parent)
                        nats_backoff = BACKOFF
                    except (TimeoutError, RuntimeError) as exc:
                        print(f"berth: nats-server did not start: {exc}", file=sys.stderr)
            time.sleep(0.2)
    finally:
        print("berth: stopping...", file=sys.stderr, flush=True)
        for child in children:  # API first: stop taking requests; the agent drains last
            child.stop(grace=settings.stop_grace + settings.pull_expires + 10)
        nats.stop()
        (data_dir / "api-url").unlink(missing_ok=True)
        print("berth: stopped", file=sys.stderr, flush=True)


def _pause(seconds: float, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop():
        time.sleep(0.1)
