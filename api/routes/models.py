"""Uploading Python model folders (Berth's addition): ``POST /v1/models`` with a tar.gz body.

The archive is checked before it is stored, off the event loop: members outside the
folder, links and devices are a 422 naming the member; past the unpacked size,
member count or compression ratio limits, a 413 (broker/artifacts.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from api.auth import AdminDep
from api.context import ContextDep
from api.openapi import errors
from broker.artifacts import MAX_ARCHIVE_BYTES, ArchiveLimits, store_model
from shared.errors import BodyTooLarge

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[AdminDep])


@router.post("/models", status_code=status.HTTP_201_CREATED, responses=errors(413))
async def upload_model(request: Request, ctx: ContextDep) -> dict[str, object]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_ARCHIVE_BYTES:
            raise BodyTooLarge(f"model archive is over {MAX_ARCHIVE_BYTES // (1024 * 1024)} MiB")
        chunks.append(chunk)
    model_id = await store_model(ctx.broker, b"".join(chunks), ArchiveLimits.of(ctx.settings))
    return {"model_id": model_id, "size": size}
