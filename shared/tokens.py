"""API tokens: their format, their digests, and making one straight in the database.

A token reads ``berth_<id>_<secret>``: the 12-hex-digit id finds the row, the
secret is checked against its SHA-256 digest in constant time. Only the digest
is stored, so a token is shown once, at creation, and can never be recovered.
(A fast hash is right here: the secret is 256 random bits, not a password.)
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from sqlalchemy import create_engine
from sqlmodel import Session

from shared.db import connect_args, run_migrations, sync_url
from shared.models import ApiToken, Scope

__all__ = ["bootstrap_token", "digest", "has_admin_token", "mint", "parse"]

_TOKEN_RE = re.compile(r"^berth_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint() -> tuple[str, str, str]:
    """A new token: ``(id, value, digest of its secret)``."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"berth_{token_id}_{secret}", digest(secret)


def parse(value: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    m = _TOKEN_RE.match(value)
    return (m.group(1), m.group(2)) if m else None


def bootstrap_token(database_url: str, name: str, scopes: list[Scope]) -> str:
    """Create a token directly in the database (``berth up``, ``berth tokens bootstrap``)."""
    run_migrations(database_url)
    token_id, value, secret_digest = mint()
    engine = create_engine(sync_url(database_url), connect_args=connect_args(database_url))
    try:
        with Session(engine) as session:
            session.add(
                ApiToken(
                    id=token_id,
                    name=name,
                    scopes=[s.value for s in scopes],
                    secret_sha256=secret_digest,
                    created_at=time.time(),
                )
            )
            session.commit()
    finally:
        engine.dispose()
    return value


def has_admin_token(rows: list[ApiToken], now: float) -> bool:
    return any(
        Scope.ADMIN in row.scopes and (row.expires_at is None or row.expires_at > now)
        for row in rows
    )
