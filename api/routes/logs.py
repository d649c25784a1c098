"""``GET /v1/logs/{endpoint_name}`` and its streaming variant: replicas' output, OctoAI's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.auth import AdminDep
from api.context import ContextDep, SessionDep
from api.routes.endpoints import get_endpoint_row
from broker.logs import follow_logs, read_logs

router = APIRouter(prefix="/v1", tags=["logs"], dependencies=[AdminDep])

ReplicaId = Annotated[str | None, Query(pattern=r"^[a-z0-9]{1,32}$")]
Begin = Annotated[datetime | None, Query(description="ISO 8601; default: the oldest kept")]
End = Annotated[datetime | None, Query(description="ISO 8601; default: now")]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def unix(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


async def ndjson(items: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """One JSON object a line, flushed as each arrives (``timestamp`` in ISO 8601)."""
    async for item in items:
        yield orjson.dumps({**item, "timestamp": iso(item["timestamp"])}) + b"\n"


@router.get("/logs/{endpoint_name}")
async def list_logs(
    endpoint_name: str,
    ctx: ContextDep,
    session: SessionDep,
    replica_id: ReplicaId = None,
    begin_time: Begin = None,
    end_time: End = None,
    max_lines: Annotated[int, Query(ge=0, le=1000)] = 100,
) -> list[dict[str, Any]]:
    await get_endpoint_row(session, endpoint_name)  # 404 for an unknown endpoint
    lines = await read_logs(
        ctx.broker,
        endpoint_name,
        replica_id=replica_id,
        begin=unix(begin_time),
        end=unix(end_time),
        max_lines=max_lines,
    )
    return [{**line, "timestamp": iso(line["timestamp"])} for line in lines]


@router.get("/logs/{endpoint_name}/stream", response_class=StreamingResponse)
async def stream_logs(
    endpoint_name: str,
    ctx: ContextDep,
    session: SessionDep,
    replica_id: ReplicaId = None,
    begin_time: Annotated[
        datetime | None, Query(description="ISO 8601; default: from now on")
    ] = None,
) -> StreamingResponse:
    await get_endpoint_row(session, endpoint_name)
    lines = follow_logs(ctx.broker, endpoint_name, replica_id=replica_id, begin=unix(begin_time))
    return StreamingResponse(ndjson(lines), media_type="application/x-ndjson")
