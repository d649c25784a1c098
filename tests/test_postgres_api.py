"""Berth on PostgreSQL through BERTH_DATABASE_URL: the API keeps its state there across restarts."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from berth.local import free_port
from shared.settings import ApiSettings
from tests.conftest import FAST, NatsServer, Stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_api_on_postgres_keeps_endpoints_across_restarts(
    pg_url: str, own_nats: NatsServer, tmp_path: Path
) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env={**FAST, "BERTH_DATABASE_URL": pg_url})
    try:
        stack.start()
        stack.deploy("pg-echo", "echo", max_replicas=1, scale_to_zero=1)
        with stack.client() as c:
            assert (
                c.post("/e/pg-echo/infer", json={"prompt": "pg"}).json()["output"]["text"] == "pg"
            )
        stack.stop("api")
        assert not (tmp_path / "berth" / "berth.db").exists()  # nothing went to SQLite
        stack.start("api")
        with stack.client() as c:
            got = c.get("/v1/endpoint/pg-echo")
            assert got.status_code == 200 and got.json()["scale_to_zero"] == 1
            assert (
                c.post("/e/pg-echo/infer", json={"prompt": "again"}).json()["output"]["text"]
                == "again"
            )
            assert c.delete("/v1/endpoint/pg-echo").status_code == 200
    finally:
        stack.close()


async def test_api_refuses_to_start_without_any_admin_token(tmp_path: Path) -> None:
    """Neither BERTH_ADMIN_TOKEN nor an admin token in the database: no start, and why."""
    from api.app import create_app

    app = create_app(ApiSettings(admin_token=None, data_dir=tmp_path))
    with pytest.raises(RuntimeError, match=r"no admin token.*berth tokens bootstrap"):
        async with app.control.router.lifespan_context(app.control):
            pass


class Cuttable:
    """A TCP relay to PostgreSQL that the test can cut (every connection closed, new ones
    refused) and mend on the same port: a database restart or failover, as the API sees it."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def mend(self) -> Cuttable:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        assert self._listener is not None
        with contextlib.suppress(OSError):  # wakes the accepting thread (close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_inference_goes_on_while_the_database_is_away(
    pg_url: str, own_nats: NatsServer, tmp_path: Path
) -> None:
    """PostgreSQL cut off mid-run: a token seen lately keeps calling its endpoint; a token
    not seen lately and the control plane get a 503 saying the database did not answer
    (never a 500, never a 401); once it is back, everything works again."""
    parts = urlsplit(pg_url)
    relay = Cuttable((parts.hostname or "127.0.0.1", parts.port or 5432)).mend()
    via_relay = parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}").geturl()
    stack = Stack(tmp_path / "berth", own_nats.url, env={**FAST, "BERTH_DATABASE_URL": via_relay})
    try:
        stack.start()
        stack.deploy("pg-away", "echo", min_replicas=1, scale_to_zero=600)
        stack.wait_ready("pg-away")
        with stack.client() as c:
            seen, unseen = (
                c.post("/v1/tokens", json={"name": n, "scopes": ["inference"]}).json()["token"]
                for n in ("seen", "unseen")
            )

        def infer(token: str) -> httpx.Response:
            return httpx.post(
                f"{stack.url}/e/pg-away/infer",
                json={"prompt": "on"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )

        assert infer(seen).status_code == 200
        relay.cut()
        # Past the token cache (FAST: 2 s): each call now asks the database.
        wait_for(lambda: infer(unseen).status_code == 503, 30, "the unseen token's 503")
        refused = infer(unseen)
        assert refused.json()["error"]["code"] == "database_unavailable", refused.text
        assert refused.headers["retry-after"]
        answered = infer(seen)
        assert answered.status_code == 200, answered.text
        assert answered.json()["output"]["text"] == "on"
        with stack.client() as c:
            listing = c.get("/v1/endpoints")
            assert listing.status_code == 503, listing.text
            assert listing.json()["error"]["code"] == "database_unavailable"
        relay.mend()
        wait_for(lambda: infer(unseen).status_code == 200, 30, "the unseen token, answered")
        with stack.client() as c:
            assert c.get("/v1/endpoints").status_code == 200
    finally:
        stack.close()
        relay.cut()
