"""API tokens: create (the value is shown once), list, delete. Admin only."""

from __future__ import annotations

import time

from fastapi import APIRouter, status
from sqlmodel import col, select

from api.auth import AdminDep
from api.context import ContextDep, SessionDep
from api.openapi import errors
from shared.errors import Conflict, NotFound
from shared.models import ApiToken, TokenCreate, TokenCreated, TokenPublic
from shared.tokens import has_admin_token, mint

router = APIRouter(prefix="/v1", tags=["tokens"], dependencies=[AdminDep])


def _public(row: ApiToken) -> TokenPublic:
    return TokenPublic.model_validate(row, from_attributes=True)


@router.post("/tokens", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
async def create_token(body: TokenCreate, session: SessionDep) -> TokenCreated:
    token_id, value, secret_digest = mint()
    now = time.time()
    row = ApiToken(
        id=token_id,
        name=body.name,
        scopes=[s.value for s in body.scopes],
        endpoints=sorted(set(body.endpoints)) if body.endpoints is not None else None,
        secret_sha256=secret_digest,
        created_at=now,
        expires_at=now + body.expires_in if body.expires_in else None,
    )
    session.add(row)
    await session.commit()
    return TokenCreated(**_public(row).model_dump(), token=value)


@router.get("/tokens", response_model=list[TokenPublic])
async def list_tokens(session: SessionDep) -> list[TokenPublic]:
    rows = (await session.exec(select(ApiToken).order_by(col(ApiToken.created_at)))).all()
    return [_public(row) for row in rows]


@router.delete("/tokens/{token_id}", responses=errors(409))
async def delete_token(token_id: str, ctx: ContextDep, session: SessionDep) -> dict[str, str]:
    row = await session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"token {token_id!r} does not exist")
    rows = list((await session.exec(select(ApiToken))).all())
    others = [r for r in rows if r.id != token_id]
    if (
        ctx.settings.static_admin_token() is None
        and has_admin_token(rows, time.time())
        and not has_admin_token(others, time.time())
    ):
        raise Conflict(
            f"token {token_id!r} is the last admin token: create another admin token first"
        )
    await session.delete(row)
    await session.commit()
    ctx.auth.forget(token_id)
    return {"message": f"token {token_id} deleted"}
