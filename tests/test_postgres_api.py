"""Berth on PostgreSQL through BERTH_DATABASE_URL: the API keeps its state there across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import ApiSettings
from tests.conftest import FAST, NatsServer, Stack

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
