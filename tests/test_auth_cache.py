"""The Authenticator's caches against a real (SQLite) database: a token that passed is
answered from memory, but never past its expiry, its cache time, or its deletion."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlmodel import select

from api.auth import STATIC_ADMIN, Authenticator
from shared.db import Database, run_migrations
from shared.errors import AuthError, DatabaseUnavailable
from shared.models import ApiToken, Scope
from shared.tokens import mint


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite:///{tmp_path / 'berth.db'}"
    run_migrations(url)
    database = Database(url)
    try:
        yield database
    finally:
        await database.engine.dispose()


async def add_token(db: Database, expires_at: float | None = None) -> tuple[str, str]:
    """A new inference token's (id, value)."""
    token_id, value, secret_digest = mint()
    async with db.session() as session:
        session.add(
            ApiToken(
                id=token_id,
                name="t",
                scopes=[Scope.INFERENCE.value],
                secret_sha256=secret_digest,
                created_at=time.time(),
                expires_at=expires_at,
            )
        )
        await session.commit()
    return token_id, value


async def delete_row(db: Database, token_id: str) -> None:
    """As another API instance would: this one is not told."""
    async with db.session() as session:
        row = (await session.exec(select(ApiToken).where(ApiToken.id == token_id))).one()
        await session.delete(row)
        await session.commit()


async def refused_within(auth: Authenticator, token: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await auth.authenticate(token)
        except AuthError as exc:
            return exc.message
        await asyncio.sleep(0.02)
    pytest.fail(f"still accepted after {seconds} s")


async def test_a_deleted_token_is_refused_once_its_cache_time_is_up(db: Database) -> None:
    auth = Authenticator(db, None, ttl=0.3)
    token_id, token = await add_token(db)
    assert (await auth.authenticate(token)).token_id == token_id
    await delete_row(db, token_id)
    started = time.monotonic()
    assert await refused_within(auth, token, 5) == "invalid token"
    assert time.monotonic() - started < 2  # the cache time, not longer


async def test_forgetting_a_token_refuses_it_at_once(db: Database) -> None:
    auth = Authenticator(db, None, ttl=60)
    token_id, token = await add_token(db)
    await auth.authenticate(token)
    await delete_row(db, token_id)
    assert (await auth.authenticate(token)).token_id == token_id  # cached: not asked again
    auth.forget(token_id)
    with pytest.raises(AuthError):
        await auth.authenticate(token)


async def test_a_cached_token_expires_on_time(db: Database) -> None:
    auth = Authenticator(db, None, ttl=60)
    _, token = await add_token(db, expires_at=time.time() + 0.5)
    await auth.authenticate(token)
    assert await refused_within(auth, token, 5) == "token expired"


async def test_wrong_tokens_are_refused_every_time(db: Database) -> None:
    auth = Authenticator(db, "the-admin-token", ttl=60)
    _, token = await add_token(db)
    assert await auth.authenticate("the-admin-token") is STATIC_ADMIN
    assert await auth.authenticate("the-admin-token") is STATIC_ADMIN  # from the cache
    for wrong in (token[:-1] + ("x" if token[-1] != "x" else "y"), "the-admin-tokeN", "nope"):
        for _ in range(2):
            with pytest.raises(AuthError):
                await auth.authenticate(wrong)


async def test_a_token_seen_lately_outlives_a_database_outage(db: Database, tmp_path: Path) -> None:
    """With the database gone, a token that passed within the stale window still works
    (not past its expiry); any other is a 503 DatabaseUnavailable, never a 401."""
    auth = Authenticator(db, None, ttl=0.05, stale=1.0)
    _, seen = await add_token(db)
    _, expiring = await add_token(db, expires_at=time.time() + 0.3)
    _, unseen = await add_token(db)
    assert (await auth.authenticate(seen)).token_id
    assert (await auth.authenticate(expiring)).token_id
    gone = Database(f"sqlite:///{tmp_path / 'no-such-folder' / 'berth.db'}")
    auth._db = gone  # the database stops answering
    try:
        await asyncio.sleep(0.35)  # past the cache time and the second token's expiry
        assert (await auth.authenticate(seen)).token_id  # within the stale window
        for token in (unseen, expiring):
            with pytest.raises(DatabaseUnavailable, match="did not answer"):
                await auth.authenticate(token)
        await asyncio.sleep(0.7)  # past the stale window: asked again, and refused
        with pytest.raises(DatabaseUnavailable):
            await auth.authenticate(seen)
    finally:
        await gone.close()
