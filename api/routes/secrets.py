"""Secrets and registry credentials, with OctoAI's paths. Values are write-only.

``GET`` returns a secret's key and timestamps, a credential's key and username;
never a value or a password. A value reaches only the replicas of endpoints that
name it (``container_secrets``, ``registry_credential``), through the agent's
sealed request (broker/secrets.py). Changing a value rolls those endpoints'
replicas over; deleting one that an endpoint uses is refused with a 409.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import field_validator
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.auth import AdminDep
from api.context import AppContext, ContextDep, SessionDep, StoreDep
from api.openapi import errors
from api.routes.endpoints import save_change
from shared.errors import Conflict, NotFound
from shared.models import Endpoint
from shared.stores import Kind, Stored
from shared.stores.base import CREDENTIAL_KEY_RE, SECRET_KEY_RE

router = APIRouter(prefix="/v1", tags=["secrets"], dependencies=[AdminDep])

MAX_VALUE = 64 * 1024


class SecretUpdate(SQLModel):
    value: str = Field(min_length=1, max_length=MAX_VALUE, repr=False)

    @field_validator("value")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL (it becomes an environment variable)")
        return value


class SecretCreate(SecretUpdate):
    key: str = Field(max_length=128)

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        if not SECRET_KEY_RE.match(key):
            raise ValueError(
                "must be an environment variable name: letters, digits and '_', not "
                "starting with a digit, at most 128 characters"
            )
        return key


class SecretPublic(SQLModel):
    key: str
    created_at: float
    updated_at: float


class CredentialCreate(SQLModel):
    key: str = Field(max_length=128)
    username: str = Field(min_length=1, max_length=1000)
    password: str = Field(min_length=1, max_length=MAX_VALUE, repr=False)

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        if not CREDENTIAL_KEY_RE.match(key):
            raise ValueError(
                "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        return key


class CredentialUpdate(SQLModel):
    username: str = Field(min_length=1, max_length=1000)
    password: str = Field(min_length=1, max_length=MAX_VALUE, repr=False)


class CredentialPublic(SQLModel):
    key: str
    username: str
    created_at: float
    updated_at: float


SecretKey = Annotated[str, Path(max_length=200)]


def _checked(kind: Kind, key: str) -> str:
    # A key from the URL never reaches a store (a Vault path!) unless it is well formed.
    if not kind.key_re().match(key):
        raise NotFound(f"{_noun(kind)} {key!r} does not exist")
    return key


def _noun(kind: Kind) -> str:
    return "secret" if kind is Kind.SECRET else "registry credential"


def _secret(item: Stored) -> SecretPublic:
    return SecretPublic(key=item.key, created_at=item.created_at, updated_at=item.updated_at)


def _credential(item: Stored) -> CredentialPublic:
    return CredentialPublic(
        key=item.key,
        username=item.data.get("username", ""),
        created_at=item.created_at,
        updated_at=item.updated_at,
    )


async def users_of(session: AsyncSession, kind: Kind, key: str) -> list[Endpoint]:
    """The endpoints that use this secret or credential."""
    rows = (await session.exec(select(Endpoint).order_by(Endpoint.name))).all()
    if kind is Kind.SECRET:
        return [ep for ep in rows if key in ep.container_secrets]
    return [ep for ep in rows if ep.registry_credential == key]


async def _roll(ctx: AppContext, session: AsyncSession, kind: Kind, key: str) -> None:
    """A value changed: the endpoints using it get new replicas with the new value."""
    for ep in await users_of(session, kind, key):
        ep.secrets_generation += 1
        await save_change(ctx, session, ep, [f"{kind.value}:{key}"])


def _found(kind: Kind, key: str, item: Stored | None) -> Stored:
    if item is None:
        raise NotFound(f"{_noun(kind)} {key!r} does not exist")
    return item


async def _delete(ctx: AppContext, session: AsyncSession, kind: Kind, key: str) -> dict[str, str]:
    _checked(kind, key)
    users = await users_of(session, kind, key)
    if users:
        names = [ep.name for ep in users]
        raise Conflict(
            f"{_noun(kind)} {key!r} is used by endpoint(s) {', '.join(names)}",
            details={"endpoints": names},
        )
    if not await ctx.store.delete(kind, key):
        raise NotFound(f"{_noun(kind)} {key!r} does not exist")
    return {"message": f"{_noun(kind)} {key} deleted"}


# -- secrets -------------------------------------------------------------------------------


@router.post(
    "/secret",
    status_code=status.HTTP_201_CREATED,
    response_model=SecretPublic,
    responses=errors(409),
)
async def create_secret(body: SecretCreate, store: StoreDep) -> SecretPublic:
    item = await store.create(Kind.SECRET, body.key, {"value": body.value})
    if item is None:
        raise Conflict(f"secret {body.key!r} already exists (PUT /v1/secret/{body.key} changes it)")
    return _secret(item)


@router.get("/secrets", response_model=list[str])
async def list_secrets(store: StoreDep) -> list[str]:
    return await store.list(Kind.SECRET)


@router.get("/secret/{key}", response_model=SecretPublic)
async def get_secret(key: SecretKey, store: StoreDep) -> SecretPublic:
    return _secret(
        _found(Kind.SECRET, key, await store.get(Kind.SECRET, _checked(Kind.SECRET, key)))
    )


@router.put("/secret/{key}", response_model=SecretPublic)
async def update_secret(
    key: SecretKey, body: SecretUpdate, ctx: ContextDep, session: SessionDep
) -> SecretPublic:
    item = _found(
        Kind.SECRET,
        key,
        await ctx.store.update(Kind.SECRET, _checked(Kind.SECRET, key), {"value": body.value}),
    )
    await _roll(ctx, session, Kind.SECRET, key)
    return _secret(item)


@router.delete("/secret/{key}", responses=errors(409))
async def delete_secret(key: SecretKey, ctx: ContextDep, session: SessionDep) -> dict[str, str]:
    return await _delete(ctx, session, Kind.SECRET, key)


# -- registry credentials --------------------------------------------------------------------


@router.post(
    "/registry-credential",
    status_code=status.HTTP_201_CREATED,
    response_model=CredentialPublic,
    responses=errors(409),
)
async def create_credential(body: CredentialCreate, store: StoreDep) -> CredentialPublic:
    item = await store.create(
        Kind.REGISTRY, body.key, {"username": body.username, "password": body.password}
    )
    if item is None:
        raise Conflict(f"registry credential {body.key!r} already exists")
    return _credential(item)


@router.get("/registry-credentials", response_model=list[CredentialPublic])
async def list_credentials(store: StoreDep) -> list[CredentialPublic]:
    found = []
    for key in await store.list(Kind.REGISTRY):
        item = await store.get(Kind.REGISTRY, key)
        if item is not None:  # deleted meanwhile
            found.append(_credential(item))
    return found


@router.get("/registry-credential/{key}", response_model=CredentialPublic)
async def get_credential(key: SecretKey, store: StoreDep) -> CredentialPublic:
    item = await store.get(Kind.REGISTRY, _checked(Kind.REGISTRY, key))
    return _credential(_found(Kind.REGISTRY, key, item))


@router.put("/registry-credential/{key}", response_model=CredentialPublic)
async def update_credential(
    key: SecretKey, body: CredentialUpdate, ctx: ContextDep, session: SessionDep
) -> CredentialPublic:
    data = {"username": body.username, "password": body.password}
    item = _found(
        Kind.REGISTRY,
        key,
        await ctx.store.update(Kind.REGISTRY, _checked(Kind.REGISTRY, key), data),
    )
    await _roll(ctx, session, Kind.REGISTRY, key)
    return _credential(item)


@router.delete("/registry-credential/{key}", responses=errors(409))
async def delete_credential(key: SecretKey, ctx: ContextDep, session: SessionDep) -> dict[str, str]:
    return await _delete(ctx, session, Kind.REGISTRY, key)
