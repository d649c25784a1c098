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


def _migrate_in_a_process(url: str, start: object) -> None:
    start.wait(10)  # type: ignore[attr-defined]
    run_migrations(url)


@pytest.mark.postgres
def test_instances_starting_together_migrate_once(pg_url: str) -> None:
    """Several API instances started at once on an empty PostgreSQL: each runs the
    migrations, one at a time (an advisory lock), and every one of them comes up."""
    import multiprocessing

    import psycopg

    how_many = 8  # without the lock, 8 at once collide every time here (4 only sometimes)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_migrate_in_a_process, args=(pg_url, start)) for _ in range(how_many)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * how_many
    with psycopg.connect(sync_url(pg_url).replace("+psycopg", "")) as conn:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'endpoint'"
        ).fetchone()
    assert len(versions) == 1 and tables == (1,)


@pytest.mark.postgres
async def test_a_sql_ascii_database_works(pg_url: str) -> None:
    """A database made without a UTF-8 locale (SQL_ASCII, as a bare initdb makes): psycopg
    would return bytes for text, and SQLAlchemy failed at its first connection."""
    import psycopg

    base, name = pg_url.rsplit("/", 1)
    ascii_db = f"{name}_ascii"
    with psycopg.connect(
        sync_url(base + "/postgres").replace("+psycopg", ""), autocommit=True
    ) as c:
        c.execute(
            f'CREATE DATABASE "{ascii_db}" ENCODING SQL_ASCII LC_COLLATE "C" LC_CTYPE "C" TEMPLATE template0'
        )
    try:
        await crud(f"{base}/{ascii_db}")
    finally:
        with psycopg.connect(
            sync_url(base + "/postgres").replace("+psycopg", ""), autocommit=True
        ) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{ascii_db}" WITH (FORCE)')
