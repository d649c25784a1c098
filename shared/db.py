"""Database engine, sessions and migrations.

SQLite by default, PostgreSQL through ``BERTH_DATABASE_URL``. The API talks to
the database through an async engine (aiosqlite / psycopg 3); Alembic runs the
migrations through the matching sync driver at start-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.errors import DatabaseUnavailable

__all__ = [
    "UNREACHABLE",
    "Database",
    "async_url",
    "connect_args",
    "run_migrations",
    "sync_url",
    "unavailable",
]

_MIGRATIONS = Path(__file__).parent / "migrations"
# The database did not answer: down, restarting, unreachable, or every pooled connection
# busy past the pool's wait. Callers get a 503 that says so (DatabaseUnavailable).
# (The drivers' own errors reach callers wrapped in these; the pool's wait is exc.TimeoutError.)
UNREACHABLE: tuple[type[Exception], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.TimeoutError,
)
# How long PostgreSQL may stay silent: a connection attempt fails after 5 s (libpq's
# default is to wait as long as the operating system does: minutes, for an address that
# does not answer), and an open connection to a server that vanished is given up after
# about 25 s of silence (TCP keepalives) or 10 s of unacknowledged writes, instead of
# holding its request forever.
# Text is UTF-8 whatever the database's own encoding: with a SQL_ASCII database (initdb
# without a UTF-8 locale) psycopg would hand back bytes, and SQLAlchemy fails at connect.
POSTGRES_CONNECT_ARGS = {
    "client_encoding": "utf8",
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def connect_args(url: str) -> dict[str, Any]:
    """The driver's arguments for a URL: POSTGRES_CONNECT_ARGS for PostgreSQL, none else."""
    return dict(POSTGRES_CONNECT_ARGS) if make_url(url).get_backend_name() == "postgresql" else {}


def unavailable(error: Exception) -> DatabaseUnavailable:
    """The caller's 503 for an error of UNREACHABLE (its class only: no SQL, no address)."""
    return DatabaseUnavailable(f"the database did not answer ({type(error).__name__}); try again")


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
        backend = make_url(url).get_backend_name()
        self.engine: AsyncEngine = create_async_engine(
            async_url(url),
            pool_pre_ping=True,
            connect_args=connect_args(url),
        )
        if backend == "sqlite":
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
