"""Migrations and the endpoint table on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from shared.db import Database, async_url, run_migrations, sync_url
from shared.models import Endpoint, EndpointCreate

PG_URL = os.environ.get("BERTH_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sub' / 'berth.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server, dropped afterwards."""
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
