"""The asset library, with OctoAI's paths and shapes (``/v1/assets``).

Create an asset (its name, type and ``data``) and receive a presigned upload URL;
``PUT`` the bytes there (no token needed: the URL carries a one-asset secret, as
an S3 presigned URL does); ``complete-upload``; the asset is then ``ready``, or
``rejected`` with the reason. The upload is streamed to a spool file on disk while
its sha256 and size are counted, checked against what the caller declared, and
then put in the object store under its digest: identical content is stored once.

Endpoints name the assets they need (``assets``); an asset in use cannot be
deleted (409). Reading is the admin's, and anyone's for a public asset.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import struct
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.background import BackgroundTask

from api.asset_imports import check_import_url
from api.auth import Principal, bearer_token, require_admin
from api.context import AppContext, ContextDep, SessionDep
from api.openapi import errors
from broker.assets import drop_content, fetch_content, store_content
from broker.connection import Broker
from shared.errors import BodyTooLarge, Conflict, Forbidden, InvalidRequest, NotFound
from shared.models import Asset, AssetStatus, Endpoint

router = APIRouter(prefix="/v1", tags=["assets"])

ASSET_TYPES = ("file", "checkpoint", "lora", "textual_inversion", "vae", "latent", "volume")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
UPLOAD_VALID_FOR = 24 * 3600.0
_WRITE_BATCH = 1024 * 1024  # bytes gathered before one write to the spool file


def clean_spool(folder: Path) -> int:
    """Remove the spool files of API processes that no longer run (an upload cut off by
    a crash leaves its file behind; the caller's retry starts a new one); how many."""
    removed = 0
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        parts = entry.name.split(".")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0
        if pid == os.getpid() or not _running(pid):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def _running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AssetCreate(BaseModel):
    """OctoAI's create body; unknown fields are ignored, as its server did."""

    model_config = ConfigDict(extra="ignore")

    name: str
    asset_type: Literal[
        "file", "checkpoint", "lora", "textual_inversion", "vae", "latent", "volume"
    ]
    data: dict[str, Any]
    description: str | None = Field(default=None, max_length=2000)
    is_public: bool | None = None
    transfer_api_type: str | None = None
    url: str | None = None
    hf_repo: str | None = None
    hf_token_secret: str | None = None
    skip_validation: bool | None = None
    # Berth's additions: what the upload must be, checked when it arrives.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size_bytes: int | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        return value


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="ignore")
    skip_validation: bool | None = None
    token: str | None = None


def iso_time(at: float) -> str:
    """A unix time as OctoAI's clients read times: ISO 8601, UTC."""
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def asset_public(ctx: AppContext, asset: Asset) -> dict[str, Any]:
    """OctoAI's Asset object (every field its strictest client requires)."""
    out: dict[str, Any] = {
        "id": asset.id,
        "name": asset.name,
        "asset_type": asset.asset_type,
        "data": asset.data,
        "status": str(asset.status),
        "status_details": asset.status_details,
        "description": asset.description,
        "size_bytes": asset.size_bytes,
        "created_at": iso_time(asset.created_at),
        "tenant_uuid": ctx.settings.tenant,
        "is_public": asset.is_public,
        "file_structure": "single_file",
    }
    if asset.sha256:
        out["sha256"] = asset.sha256  # Berth's addition
    return out


async def maybe_principal(request: Request, ctx: ContextDep) -> Principal | None:
    """The caller, or None when no token was sent (public assets only)."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        return None
    return await ctx.auth.authenticate(token)


MaybePrincipal = Annotated[Principal | None, Depends(maybe_principal)]
Admin = Depends(require_admin)


def split_values(values: list[str] | None) -> list[str]:
    """A list filter sent repeated (Python clients) or comma-joined (TypeScript)."""
    return [v for raw in values or () for v in raw.split(",") if v]


async def find_asset(
    session: SessionDep, ctx: AppContext, key: str, principal: Principal | None
) -> Asset:
    """By id, by name, or by ``owner/name``; a private one only for an admin."""
    found = await lookup_asset(session, key, ctx.settings.tenant)
    if found is None or not (found.is_public or (principal is not None and principal.is_admin)):
        raise NotFound(f"asset {key!r} does not exist")
    return found


async def lookup_asset(session: AsyncSession, key: str, tenant: str) -> Asset | None:
    """By id (a deleted one too), by name, or by ``owner/name`` (the owner is this
    Berth's ``tenant``)."""
    owner, _, name = key.rpartition("/")
    if owner:
        return await asset_named(session, name) if owner == tenant else None
    return await session.get(Asset, key) or await asset_named(session, key)


async def asset_named(session: AsyncSession, name: str) -> Asset | None:
    """The asset of that name that is not deleted (names are unique among those)."""
    rows = await session.exec(
        select(Asset).where(Asset.name == name, Asset.status != AssetStatus.DELETED)
    )
    return rows.first()


async def asset_users(session: SessionDep, asset_id: str) -> list[str]:
    """The endpoints that name this asset."""
    rows = (await session.exec(select(Endpoint))).all()
    return sorted(ep.name for ep in rows if asset_id in (ep.assets or ()))


def _upload_url(ctx: AppContext, asset: Asset, token: str) -> dict[str, Any]:
    base = ctx.settings.base_url()
    return {
        "type": "presigned-url",
        "put_url": f"{base}/v1/assets/{asset.id}/upload?token={token}",
        "get_url": f"{base}/v1/assets/{asset.id}/download",
    }


@router.post("/assets", dependencies=[Admin], responses=errors(409, 413))
async def create_asset(body: AssetCreate, ctx: ContextDep, session: SessionDep) -> dict[str, Any]:
    if body.data.get("asset_type", body.asset_type) != body.asset_type:
        raise InvalidRequest("data.asset_type must equal asset_type")
    if body.hf_repo:
        raise InvalidRequest(
            "this Berth fetches nothing from Hugging Face repositories: upload the files, "
            "or give the url of each"
        )
    if body.url:  # fetched by the API (api/asset_imports.py): whatever transfer was asked
        check_import_url(body.url)
    elif body.transfer_api_type not in (None, "presigned-url", "any"):
        raise InvalidRequest(
            f"transfer_api_type {body.transfer_api_type!r} is not offered: Berth takes "
            "uploads by presigned-url (a plain HTTP PUT)"
        )
    if body.size_bytes is not None and body.size_bytes > ctx.settings.asset_max_bytes:
        raise BodyTooLarge(f"an asset may be at most {ctx.settings.asset_max_bytes} bytes")
    if await asset_named(session, body.name) is not None:
        raise Conflict(f"asset {body.name!r} already exists")
    token = secrets.token_urlsafe(24)
    now = time.time()
    asset = Asset(
        id=f"asset_{secrets.token_hex(12)}",
        name=body.name,
        asset_type=body.asset_type,
        data={**body.data, "asset_type": body.asset_type},
        description=body.description or "",
        is_public=bool(body.is_public),
        expected_sha256=body.sha256,
        expected_size=body.size_bytes,
        skip_validation=bool(body.skip_validation),
        upload_token_sha256=None if body.url else hashlib.sha256(token.encode()).hexdigest(),
        upload_expires_at=None if body.url else now + UPLOAD_VALID_FOR,
        status=AssetStatus.UPLOADED if body.url else AssetStatus.READY_TO_UPLOAD,
        source_url=body.url,
        created_at=now,
        updated_at=now,
    )
    session.add(asset)
    await session.commit()
    await session.refresh(asset)
    if body.url:
        assert ctx.imports is not None
        ctx.imports.start(asset.id)
        return {"asset": asset_public(ctx, asset), "transfer_api": {"type": "none"}, "token": ""}
    return {
        "asset": asset_public(ctx, asset),
        "transfer_api": _upload_url(ctx, asset, token),
        "token": "",
    }


@router.get("/assets")
async def list_assets(
    ctx: ContextDep,
    session: SessionDep,
    principal: MaybePrincipal,
    name: str | None = None,
    is_public: bool | None = None,
    data_type: str | None = None,
    asset_type: Annotated[list[str] | None, Query()] = None,
    engine: Annotated[list[str] | None, Query()] = None,
    engine_type: str | None = None,
    file_format: Annotated[list[str] | None, Query()] = None,
    asset_ids: str | None = None,
    owner: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Assets newest first, filtered as OctoAI's clients ask; ``total`` counts all matches."""
    admin = principal is not None and principal.is_admin
    rows = (
        await session.exec(
            select(Asset)
            .where(Asset.status != AssetStatus.DELETED)
            .order_by(Asset.created_at.desc())  # type: ignore[attr-defined]
        )
    ).all()
    types, engines, formats = (
        split_values(asset_type),
        split_values(engine),
        split_values(file_format),
    )
    ids = set(split_values([asset_ids] if asset_ids else None))

    def wanted(a: Asset) -> bool:
        return (
            (admin or a.is_public)
            and (owner is None or owner == ctx.settings.tenant)
            and (name is None or name in a.name)
            and (is_public is None or a.is_public == is_public)
            and (data_type is None or a.data.get("data_type") == data_type)
            and (not types or a.asset_type in types)
            and (not engines or a.data.get("engine") in engines)
            and (engine_type is None or str(a.data.get("engine", "")).startswith(engine_type + "/"))
            and (not formats or a.data.get("file_format") in formats)
            and (not ids or a.id in ids)
        )

    matched = [a for a in rows if wanted(a)]
    page = matched[offset : offset + limit]
    return {
        "data": [asset_public(ctx, a) for a in page],
        "has_more": offset + len(page) < len(matched),
        "total": len(matched),
    }


@router.get("/assets/{asset_id}/download", responses=errors(404, 409, 503))
async def download_asset(
    asset_id: str, ctx: ContextDep, session: SessionDep, principal: MaybePrincipal
) -> FileResponse:
    """The asset's bytes (spooled from the object store to a file, then sent)."""
    asset = await find_asset(session, ctx, asset_id, principal)
    if asset.status != AssetStatus.READY or not asset.sha256:
        raise Conflict(f"asset {asset.id} is {asset.status}: it has no content to send")
    spool = ctx.settings.data_dir / "asset-uploads"
    spool.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool, prefix=f"{asset.id}.{os.getpid()}.get.")
    os.close(fd)
    path = Path(name)
    try:
        await fetch_content(ctx.broker, asset.sha256, path)
    except BaseException:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=asset.name,
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


@router.get("/assets/{owner}/{name}", responses=errors(404))
async def get_asset_by_owner(
    owner: str, name: str, ctx: ContextDep, session: SessionDep, principal: MaybePrincipal
) -> dict[str, Any]:
    asset = await find_asset(session, ctx, f"{owner}/{name}", principal)
    return {"asset": asset_public(ctx, asset), "transfer_api": {"type": "none"}}


@router.get("/assets/{key}", responses=errors(404))
async def get_asset(
    key: str, ctx: ContextDep, session: SessionDep, principal: MaybePrincipal
) -> dict[str, Any]:
    asset = await find_asset(session, ctx, key, principal)
    return {"asset": asset_public(ctx, asset), "transfer_api": {"type": "none"}}


@router.put("/assets/{asset_id}/upload", responses=errors(403, 404, 409, 413, 503))
async def upload_asset(
    asset_id: str, request: Request, ctx: ContextDep, session: SessionDep, token: str = ""
) -> dict[str, Any]:
    """The presigned URL's target: the asset's bytes, streamed, with no other token."""
    asset = await session.get(Asset, asset_id)
    if asset is None:
        raise NotFound(f"asset {asset_id!r} does not exist")
    if not asset.upload_token_sha256 or not secrets.compare_digest(
        asset.upload_token_sha256, hashlib.sha256(token.encode()).hexdigest()
    ):
        raise Forbidden("this upload URL is not valid")
    if asset.status != AssetStatus.READY_TO_UPLOAD:
        raise Conflict(f"asset {asset.id} is {asset.status}: it takes no upload")
    if asset.upload_expires_at is not None and time.time() > asset.upload_expires_at:
        raise Forbidden("this upload URL has expired: create the asset again")
    limit = ctx.settings.asset_max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"an asset may be at most {limit} bytes")
    spool = ctx.settings.data_dir / "asset-uploads"
    spool.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool, prefix=f"{asset.id}.{os.getpid()}.")
    path = Path(name)
    try:
        digest, size = await _receive(request, fd, limit)
        reason = await asyncio.to_thread(_check, asset, digest, size, declared, path)
        if reason is not None:
            asset.status_details = reason
            asset.updated_at = time.time()
            session.add(asset)
            await session.commit()
            raise InvalidRequest(reason)
        await store_content(ctx.broker, digest, path)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    asset.sha256, asset.size_bytes = digest, size
    asset.status_details = ""
    asset.updated_at = time.time()
    session.add(asset)
    await session.commit()
    return {"id": asset.id, "size_bytes": size, "sha256": digest}


async def _receive(request: Request, fd: int, limit: int) -> tuple[str, int]:
    """Stream the body to ``fd``: its sha256 and size; 413 past ``limit``."""
    hasher = hashlib.sha256()
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    with os.fdopen(fd, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"an asset may be at most {limit} bytes")
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= _WRITE_BATCH:
                batch, pending, pending_size = b"".join(pending), [], 0
                await asyncio.to_thread(_write, f, hasher, batch)
        if pending:
            await asyncio.to_thread(_write, f, hasher, b"".join(pending))
    return hasher.hexdigest(), size


def _write(f: Any, hasher: Any, data: bytes) -> None:
    hasher.update(data)
    f.write(data)


def _check(asset: Asset, digest: str, size: int, declared: str | None, path: Path) -> str | None:
    """Why the upload is refused, or None."""
    if declared is not None and declared.isdigit() and int(declared) != size:
        return f"the upload ended after {size} of {declared} bytes"
    if asset.expected_size is not None and size != asset.expected_size:
        return f"the upload is {size} bytes, not the {asset.expected_size} declared"
    if asset.expected_sha256 is not None and digest != asset.expected_sha256:
        return f"the upload's sha256 is {digest}, not the {asset.expected_sha256} declared"
    if asset.skip_validation:
        return None
    return validate_content(asset, path, size)


_MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpg": (b"\xff\xd8\xff",),
    "jpeg": (b"\xff\xd8\xff",),
    "wav": (b"RIFF",),
    "mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"),
}


def validate_content(asset: Asset, path: Path, size: int) -> str | None:
    """Whether the bytes are what ``data.file_format`` says: a safetensors header that
    parses, an image or sound file's signature, JSON lines that parse."""
    fmt = str(asset.data.get("file_format") or "").lower()
    with path.open("rb") as f:
        head = f.read(8)
        if fmt == "safetensors":
            if size < 8:
                return "not a safetensors file: shorter than its header length"
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 * 1024 * 1024):
                return "not a safetensors file: its header length runs past the file"
            try:
                header = json.loads(f.read(length))
            except ValueError:
                return "not a safetensors file: its header is not JSON"
            if not isinstance(header, dict):
                return "not a safetensors file: its header is not a JSON object"
            return None
        if fmt in _MAGIC and not any(head.startswith(m) for m in _MAGIC[fmt]):
            return f"not a {fmt} file: its first bytes are not a {fmt} signature"
        if fmt == "jsonl":
            f.seek(0)
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except ValueError:
                        return f"not JSON lines: line {number} does not parse"
    return None


@router.post("/assets/{asset_id}/complete-upload", dependencies=[Admin], responses=errors(404))
async def complete_upload(
    asset_id: str, ctx: ContextDep, session: SessionDep, body: CompleteUpload | None = None
) -> dict[str, Any]:
    asset = await session.get(Asset, asset_id)
    if asset is None or asset.status == AssetStatus.DELETED:
        raise NotFound(f"asset {asset_id!r} does not exist")
    if asset.status != AssetStatus.READY_TO_UPLOAD:
        return {} if asset.status == AssetStatus.READY else {"error": asset.status_details}
    if asset.sha256 is None:
        asset.status = AssetStatus.REJECTED
        asset.status_details = asset.status_details or "nothing was uploaded"
    else:
        asset.status = AssetStatus.READY
    asset.upload_token_sha256 = None
    asset.updated_at = time.time()
    session.add(asset)
    await session.commit()
    return {} if asset.status == AssetStatus.READY else {"error": asset.status_details}


@router.delete("/assets/{asset_id}", dependencies=[Admin], responses=errors(404, 409))
async def delete_asset(asset_id: str, ctx: ContextDep, session: SessionDep) -> dict[str, Any]:
    asset = await session.get(Asset, asset_id)
    if asset is None or asset.status == AssetStatus.DELETED:
        raise NotFound(f"asset {asset_id!r} does not exist")
    users = await asset_users(session, asset.id)
    if users:
        raise Conflict(f"asset {asset.name!r} is used by endpoint(s) {', '.join(users)}")
    now = time.time()
    asset.status, asset.deleted_at, asset.updated_at = AssetStatus.DELETED, now, now
    asset.upload_token_sha256 = None
    session.add(asset)
    await session.commit()
    if asset.sha256:
        await release_content(session, ctx.broker, asset.sha256)
    return {"id": asset.id, "deleted_at": iso_time(now)}


async def release_content(session: AsyncSession, broker: Broker, sha256: str) -> None:
    """Drop stored content that no asset (but deleted ones) names any more."""
    named = await session.exec(
        select(Asset).where(Asset.sha256 == sha256, Asset.status != AssetStatus.DELETED)
    )
    if named.first() is None:
        await drop_content(broker, sha256)
