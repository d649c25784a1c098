"""Bearer-token auth. Nothing is open by accident: the API refuses to start without an admin token."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, Request

from api.context import ContextDep
from shared.errors import AuthError

__all__ = ["AdminDep", "bearer_token", "is_admin"]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_admin(token: str | None, admin_token: str) -> bool:
    if token is None:
        return False
    # Compare digests so the comparison takes the same time whatever the lengths.
    return hmac.compare_digest(
        hashlib.sha256(token.encode()).digest(), hashlib.sha256(admin_token.encode()).digest()
    )


def require_admin(request: Request, ctx: ContextDep) -> None:
    assert ctx.settings.admin_token is not None
    if not is_admin(bearer_token(request), ctx.settings.admin_token.get_secret_value()):
        raise AuthError()


AdminDep = Depends(require_admin)
