"""``berth up``: the embedded default on one machine.

Starts a ``nats-server`` with JetStream on the data directory, then the API, the
scaler and one fleet agent as child processes; prints the API URL and admin
token; on Ctrl-C stops them in order (API, scaler, agent — which drains its
replicas — then NATS). State lives in ``BERTH_DATA_DIR``; running it again
keeps endpoints, models and queued requests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from berth.local import LocalNats, stop_process, wait_until
from shared.models import Scope
from shared.proc import die_with_parent
from shared.settings import UpSettings
from shared.tokens import bootstrap_token, parse

__all__ = ["main"]


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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


def main(settings: UpSettings | None = None) -> None:
    settings = settings or UpSettings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = bootstrap_tokens(settings, data_dir)
    api_port = settings.port
    url = settings.public_url or f"http://{settings.host}:{api_port}"

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    nats = LocalNats(
        data_dir / "nats", settings.nats_port or None, log=data_dir / "nats-server.log"
    )
    try:
        try:
            nats.start(start_new_session=True, preexec_fn=die_with_parent)
        except (TimeoutError, RuntimeError, FileNotFoundError) as exc:
            raise SystemExit(f"berth: {exc}") from None
        nats_url = nats.url
        (data_dir / "nats-url").write_text(nats_url + "\n")
        env = dict(os.environ)
        if tokens.static_admin:
            env["BERTH_ADMIN_TOKEN"] = tokens.static_admin
        env.update(
            BERTH_DATA_DIR=str(data_dir),
            BERTH_NATS_URL=nats_url,
            BERTH_AGENT_TOKEN=tokens.agent,
            BERTH_PORT=str(api_port),
            BERTH_HOST=settings.host,
        )
        berth = [sys.executable, "-m", "berth.cli"]
        children.append(("api", _spawn([*berth, "api"], env)))
        children.append(("scaler", _spawn([*berth, "scaler"], env)))
        children.append(("agent", _spawn([*berth, "agent"], env)))
        wait_for_api(url, children[0][1])
        (data_dir / "api-url").write_text(url + "\n")
        token_file = data_dir / "admin-token"
        shown = (
            f"{tokens.admin}\n               (shown this once; also kept in {token_file}, mode 0600)"
            if tokens.admin_is_new
            else f"in {token_file}"
        )
        print(
            f"\nBerth is up.\n  API:         {url}\n  admin token: {shown}\n"
            f"  data dir:    {data_dir}\n\n"
            f"  export BERTH_URL={url} BERTH_TOKEN=$(cat {token_file})\n"
            f"Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    print(
                        f"berth: {name} exited with code {proc.returncode}; stopping",
                        file=sys.stderr,
                    )
                    stopping = True
            if nats.proc is not None and nats.proc.poll() is not None:
                print("berth: nats-server exited; stopping", file=sys.stderr)
                stopping = True
            time.sleep(0.2)
    finally:
        print("berth: stopping...", file=sys.stderr, flush=True)
        for _, proc in children:  # API first: stop taking requests; the agent drains last
            stop_process(proc, grace=settings.stop_grace + settings.pull_expires + 10)
        nats.stop()
        (data_dir / "api-url").unlink(missing_ok=True)
        print("berth: stopped", file=sys.stderr, flush=True)
