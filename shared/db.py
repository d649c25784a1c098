"""Database engine, sessions and migrations.

SQLite by default, PostgreSQL through ``BERTH_DATABASE_URL``. The API talks to
the database through an async engine (aiosqlite / psycopg 3); Alembic runs the
migrations through the matching sync driver at start-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

__all__ = ["Database", "async_url", "run_migrations", "sync_url"]

_MIGRATIONS = Path(__file__).parent / "migrations"


_DRIVERS = {
    # backend: (sync driver for Alembic, async driver for the API)
    "postgresql": ("postgresql+psycopg", "postgresql+psycopg"),
    "sqlite": ("sqlite", "sqlite+aiosqlite"),
}


def _with_driver(url: str, which: int) -> str:
    u = make_url(url)
    drivers = _DRIVERS.get(u.get_backend_name())
    if drivers is None:
        return url
    return u.set(drivername=drivers[which]).render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """The URL with the sync driver Alembic uses."""
    return _with_driver(url, 0)


def async_url(url: str) -> str:
    """The URL with the async driver the API uses."""
    return _with_driver(url, 1)


def run_migrations(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database:
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["url"] = sync_url(url)
    command.upgrade(cfg, "head")


class Database:
    """Owns the async engine; a context manager so its lifetime is explicit."""

    def __init__(self, url: str):
        self.engine: AsyncEngine = create_async_engine(async_url(url), pool_pre_ping=True)
        if make_url(url).get_backend_name() == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
