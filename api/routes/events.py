"""``GET /v1/events/{endpoint_name}`` (and ``/stream``): replica lifecycle and scale decisions,
in OctoAI's event shape."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.auth import AdminDep
from api.context import ContextDep, SessionDep
from api.routes.endpoints import get_endpoint_row
from api.routes.logs import iso, ndjson, unix
from broker.events import follow_events, read_events

router = APIRouter(prefix="/v1", tags=["events"], dependencies=[AdminDep])


@router.get("/events/{endpoint_name}")
async def list_events(
    endpoint_name: str,
    ctx: ContextDep,
    session: SessionDep,
    begin_time: Annotated[
        datetime | None, Query(description="ISO 8601; default: the oldest kept")
    ] = None,
    end_time: Annotated[datetime | None, Query(description="ISO 8601; default: now")] = None,
    max_lines: Annotated[int, Query(ge=0, le=1000)] = 100,
) -> list[dict[str, Any]]:
    await get_endpoint_row(session, endpoint_name)  # 404 for an unknown endpoint
    events = await read_events(
        ctx.broker,
        endpoint_name,
        begin=unix(begin_time),
        end=unix(end_time),
        max_lines=max_lines,
    )
    return [{**e, "timestamp": iso(e["timestamp"])} for e in events]


@router.get("/events/{endpoint_name}/stream", response_class=StreamingResponse)
async def stream_events(
    endpoint_name: str,
    ctx: ContextDep,
    session: SessionDep,
    begin_time: Annotated[
        datetime | None, Query(description="ISO 8601; default: from now on")
    ] = None,
) -> StreamingResponse:
    """The endpoint's events as they happen, one JSON object a line."""
    await get_endpoint_row(session, endpoint_name)
    events = follow_events(ctx.broker, endpoint_name, begin=unix(begin_time))
    return StreamingResponse(ndjson(events), media_type="application/x-ndjson")
