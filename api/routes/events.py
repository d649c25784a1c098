"""``GET /v1/events/{endpoint_name}``: replica lifecycle and scale decisions, in OctoAI's event shape."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.auth import AdminDep
from api.context import ContextDep, SessionDep
from api.routes.endpoints import get_endpoint_row
from broker.events import read_events

router = APIRouter(prefix="/v1", tags=["events"], dependencies=[AdminDep])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


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
        begin=_utc(begin_time).timestamp() if begin_time else None,
        end=_utc(end_time).timestamp() if end_time else None,
        max_lines=max_lines,
    )
    return [{**e, "timestamp": _iso(e["timestamp"])} for e in events]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
