"""Migrations and the endpoint table on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from shared.db import Database, async_url, run_migrations, sync_url
from shared.models import Endpoint, EndpointCreate


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sub' / 'berth.db'}"


def test_url_drivers() -> None:
    assert async_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert sync_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert async_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"


async def crud(url: str) -> None:
    run_migrations(url)
    run_migrations(url)  # idempotent
    db = Database(url)
    try:
        async with db.session() as s:
            ep = Endpoint.model_validate(
                EndpointCreate(
                    name="echo",
                    model_id="sha256:x",
                    env_overrides={"A": "1"},
                    container_secrets=["k"],
                )
            )
            s.add(ep)
            await s.commit()
        async with db.session() as s:
            got = (await s.exec(select(Endpoint).where(Endpoint.name == "echo"))).one()
            assert got.env_overrides == {"A": "1"} and got.container_secrets == ["k"]
            assert got.max_replicas == 1 and got.visibility == "private"
    finally:
        await db.close()


async def test_sqlite_migrations_and_crud(sqlite_url: str) -> None:
    await crud(sqlite_url)


@pytest.mark.postgres
async def test_postgres_migrations_and_crud(pg_url: str) -> None:
    await crud(pg_url)
