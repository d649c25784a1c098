"""What the console watches: every endpoint's live state, an endpoint's last hour, recent jobs.

- ``GET /v1/endpoints/stream``: one JSON line per change of any endpoint's state,
  replicas, queue or in-flight count (checked every ``live_interval`` seconds; the
  same line again after 15 s of quiet, so that a proxy keeps the stream open).
- ``GET /v1/endpoint/{name}/metrics``: the points the API's recorder kept (api/metrics.py).
- ``GET /v1/requests``: the newest async jobs, from the jobs bucket's recent changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.auth import AdminDep
from api.context import AppContext, ContextDep, SessionDep
from api.jobs import timings
from api.metrics import replica_counts
from api.routes.endpoints import get_endpoint_row
from broker.connection import BROKER_FAILURES
from broker.jetstream import backlog
from broker.jobs import recent_jobs
from shared.errors import BrokerUnavailable

router = APIRouter(prefix="/v1", tags=["console"], dependencies=[AdminDep])

_QUIET_REPEAT_S = 15.0
# Changes of the jobs bucket read for GET /v1/requests: the newest jobs are among them.
_JOB_SCAN = 2000


async def endpoint_states(ctx: AppContext) -> list[dict[str, Any]]:
    """Every endpoint as the console lists it, from the API's mirrors and JetStream."""
    now = time.time()
    by_endpoint: dict[str, list[Any]] = {}
    for r in ctx.replicas.items.values():
        by_endpoint.setdefault(r.endpoint, []).append(r)
    out = []
    for name, spec in sorted(ctx.endpoints.items.items()):
        queued = in_flight = None
        try:
            found = await backlog(ctx.broker, name)
        except BROKER_FAILURES:
            found = None
        if found is not None:
            queued, in_flight = found.queued, found.in_flight
        health = ctx.health.items.get(name)
        replicas = replica_counts(by_endpoint.get(name, []), now)
        if spec.disabled:
            state = "disabled"
        elif health is not None:
            state = "failing"
        elif replicas["busy"] or replicas["ready"]:
            state = "running"
        elif replicas["starting"]:
            state = "starting"
        else:
            state = "idle"  # scaled to zero, or waiting for its first replica
        out.append(
            {
                "name": name,
                "state": state,
                "reason": health.reason if health is not None else None,
                "public": spec.public,
                "min_replicas": spec.min_replicas,
                "max_replicas": spec.max_replicas,
                "instance_type": spec.instance_type,
                "replicas": replicas,
                "queued": queued,
                "in_flight": in_flight,
            }
        )
    return out


@router.get("/endpoints/stream", response_class=StreamingResponse)
async def stream_endpoints(request: Request, ctx: ContextDep) -> StreamingResponse:
    """Every endpoint's state now, then again whenever any of it changes (one JSON line each)."""

    async def lines() -> AsyncIterator[bytes]:
        last: bytes = b""
        sent_at = 0.0
        while not await request.is_disconnected():
            states = await endpoint_states(ctx)
            line = orjson.dumps({"endpoints": states})
            now = time.monotonic()
            if line != last or now - sent_at > _QUIET_REPEAT_S:
                yield line + b"\n"
                last, sent_at = line, now
            await asyncio.sleep(ctx.settings.live_interval)

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"cache-control": "no-store", "x-content-type-options": "nosniff"},
    )


@router.get("/endpoint/{endpoint_name}/metrics")
async def endpoint_metrics(
    endpoint_name: str,
    ctx: ContextDep,
    session: SessionDep,
    since: Annotated[float, Query(description="unix time; default: the last hour")] = 0.0,
) -> dict[str, Any]:
    """Requests, errors, latency p50/p95, queue and replicas per interval over the last hour."""
    await get_endpoint_row(session, endpoint_name)
    return {
        "endpoint": endpoint_name,
        "interval_s": ctx.metrics.interval,
        "points": ctx.metrics.points(endpoint_name, since),
    }


@router.get("/requests")
async def list_requests(
    ctx: ContextDep,
    endpoint: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    """The newest async jobs (all tokens'), newest first, with timings and callback log."""
    try:
        jobs = await recent_jobs(ctx.broker, _JOB_SCAN)
    except BROKER_FAILURES as exc:
        raise BrokerUnavailable(f"the jobs bucket could not be read: {exc}") from exc
    now = time.time()
    chosen = sorted(
        (j for j in jobs if endpoint is None or j.endpoint == endpoint),
        key=lambda j: j.created_at,
        reverse=True,
    )[:limit]
    return [
        {
            "response_id": j.response_id,
            "endpoint": j.endpoint,
            "status": j.status.value,
            "created_at": j.created_at,
            "started_at": j.started_at,
            "finished_at": j.finished_at,
            "replica_id": j.replica_id,
            "reason": j.reason,
            "timings": timings(j, now),
            "callback": j.callback.model_dump(mode="json") if j.callback else None,
        }
        for j in chosen
    ]
