"""Who is calling: bearer tokens, their scopes, and the checks routes depend on.

A token is either the static admin token from ``BERTH_ADMIN_TOKEN`` (for
automation and bootstrap) or a row of the ``api_token`` table (see
:mod:`shared.tokens`). Rows are cached for ``token_cache_ttl`` seconds, and so is
each token that passed the full check, by its value: the data plane's hot path
costs one dict lookup instead of a full check's SHA-256s (OpenSSL's code runs cold
between requests). Only tokens that passed
are kept, so guesses never reach the cache; a lookup compares strings only after
their keyed hashes match, which tells a caller nothing of a token.

A missing, malformed, unknown, wrong or expired token is a 401; a valid token
outside its scope is a 403. Every comparison of secrets is constant-time. While the
database does not answer, a token that passed within ``token_stale_ttl`` still works,
and any other is a 503 (``database_unavailable``), never taken for a wrong token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.context import ContextDep
from shared.db import UNREACHABLE, Database, unavailable
from shared.errors import AuthError, DatabaseUnavailable, Forbidden
from shared.models import ApiToken, Scope
from shared.tokens import digest, parse

__all__ = [
    "AdminDep",
    "Authenticator",
    "Principal",
    "PrincipalDep",
    "bearer_token",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller."""

    token_id: str  # "static" for BERTH_ADMIN_TOKEN
    scopes: frozenset[str]
    endpoints: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def may_infer(self, endpoint: str) -> bool:
        if self.is_admin:
            return True
        return Scope.INFERENCE in self.scopes and (
            self.endpoints is None or endpoint in self.endpoints
        )

    def may_scrape(self) -> bool:
        return self.is_admin or Scope.METRICS in self.scopes

    def may_fetch_secrets(self) -> bool:
        return self.is_admin or Scope.AGENT in self.scopes


STATIC_ADMIN = Principal(token_id="static", scopes=frozenset({Scope.ADMIN}))


@dataclass(slots=True)
class _Cached:
    """A looked-up token id; ``principal`` is None when no such token exists."""

    secret_sha256: str
    principal: Principal | None
    expires_at: float | None
    fetched_at: float


@dataclass(slots=True)
class _Passed:
    """A token value that passed the full check at ``checked_at``."""

    principal: Principal
    checked_at: float
    expires_at: float | None


def _same(a: str, b: str) -> bool:
    # Digests of both, so the time taken does not depend on where they differ or their lengths.
    return hmac.compare_digest(
        hashlib.sha256(a.encode()).digest(), hashlib.sha256(b.encode()).digest()
    )


class Authenticator:
    """Turns a bearer token into a :class:`Principal`, or raises 401."""

    def __init__(self, db: Database, static_admin: str | None, ttl: float, stale: float = 0.0):
        self._db = db
        self._static = static_admin or None
        self._ttl = ttl
        self._stale = max(stale, ttl)
        self._cache: dict[str, _Cached] = {}
        self._passed: dict[str, _Passed] = {}  # token value → the full check it passed

    def forget(self, token_id: str) -> None:
        """Drop a cached token at once (it was deleted through this instance)."""
        self._cache.pop(token_id, None)
        for value, hit in list(self._passed.items()):
            if hit.principal.token_id == token_id:
                del self._passed[value]

    async def _lookup(self, token_id: str, now: float) -> _Cached:
        cached = self._cache.get(token_id)
        if cached is not None and now - cached.fetched_at < self._ttl:
            return cached
        try:
            async with self._db.session() as session:
                row = await session.get(ApiToken, token_id)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        if row is None:
            entry = _Cached(secret_sha256="", principal=None, expires_at=None, fetched_at=now)
        else:
            entry = _Cached(
                secret_sha256=row.secret_sha256,
                principal=Principal(
                    token_id=row.id,
                    scopes=frozenset(row.scopes),
                    endpoints=None if row.endpoints is None else frozenset(row.endpoints),
                ),
                expires_at=row.expires_at,
                fetched_at=now,
            )
        if len(self._cache) >= 10_000:  # bounded: made-up ids cannot grow it without limit
            self._cache.clear()
        self._cache[token_id] = entry
        return entry

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("missing bearer token (Authorization: Bearer <token>)")
        now = time.time()
        hit = self._passed.get(token)
        if (
            hit is not None
            and now - hit.checked_at < self._ttl
            and (hit.expires_at is None or hit.expires_at > now)
        ):
            return hit.principal
        try:
            principal, expires_at = await self._check(token, now)
        except DatabaseUnavailable:
            if (
                hit is not None
                and now - hit.checked_at < self._stale
                and (hit.expires_at is None or hit.expires_at > now)
            ):
                return hit.principal  # checked lately: kept through the outage, unrenewed
            raise
        if len(self._passed) >= 10_000:  # bounded, as the row cache is
            self._passed.clear()
        self._passed[token] = _Passed(principal, now, expires_at)
        return principal

    async def _check(self, token: str, now: float) -> tuple[Principal, float | None]:
        """The full check: the token's principal and when it expires, or AuthError."""
        if self._static is not None and _same(token, self._static):
            return STATIC_ADMIN, None
        parsed = parse(token)
        if parsed is None:
            raise AuthError("invalid token")
        token_id, secret = parsed
        entry = await self._lookup(token_id, now)
        if entry.principal is None or not hmac.compare_digest(entry.secret_sha256, digest(secret)):
            raise AuthError("invalid token")
        if entry.expires_at is not None and entry.expires_at <= now:
            raise AuthError("token expired")
        return entry.principal, entry.expires_at


def bearer_token(value: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def current_principal(request: Request, ctx: ContextDep) -> Principal:
    return await ctx.auth.authenticate(bearer_token(request.headers.get("authorization", "")))


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this token may not use the control plane (it needs the admin scope)")
    return principal


AdminDep = Depends(require_admin)
