"""``berth up``: the embedded default on one machine.

Starts a ``nats-server`` with JetStream on the data directory, then the API, the
scaler and one fleet agent as child processes; prints the API URL and admin
token; on Ctrl-C stops them in order (API, scaler, agent — which drains its
replicas — then NATS). State lives in ``BERTH_DATA_DIR``; running it again
keeps endpoints, models and queued requests.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from berth.local import LocalNats, stop_process, wait_until
from shared.proc import die_with_parent
from shared.settings import UpSettings

__all__ = ["main"]


def admin_token(data_dir: Path) -> str:
    """The bootstrap admin token: BERTH_ADMIN_TOKEN, or one made on first start (0600 file)."""
    if os.environ.get("BERTH_ADMIN_TOKEN"):
        return os.environ["BERTH_ADMIN_TOKEN"]
    path = data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    token = "berth_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


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
    token = admin_token(data_dir)
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
        env.update(
            BERTH_DATA_DIR=str(data_dir),
            BERTH_NATS_URL=nats_url,
            BERTH_ADMIN_TOKEN=token,
            BERTH_PORT=str(api_port),
            BERTH_HOST=settings.host,
        )
        berth = [sys.executable, "-m", "berth.cli"]
        children.append(("api", _spawn([*berth, "api"], env)))
        children.append(("scaler", _spawn([*berth, "scaler"], env)))
        children.append(("agent", _spawn([*berth, "agent"], env)))
        wait_for_api(url, children[0][1])
        (data_dir / "api-url").write_text(url + "\n")
        print(
            f"\nBerth is up.\n  API:         {url}\n  admin token: {token}\n"
            f"  data dir:    {data_dir}\n\n"
            f"  export BERTH_URL={url} BERTH_TOKEN={token}\n"
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
