"""Async jobs, OctoAI's way: poll ``/v1/requests/{id}``, then fetch ``/v1/responses/{id}``.

A job can be read by whoever may call its endpoint: any valid token allowed on
it, or anyone for a public endpoint (the id is a random UUID). Without a valid
token, an unknown id is a 401, not a 404.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.auth import bearer_token
from api.context import AppContext, ContextDep
from api.routes.inference import NOT_RETURNED
from broker.jobs import get_job, get_response
from shared.errors import BerthError, Forbidden, NotFound
from shared.messages import JobRecord, JobStatus

router = APIRouter(prefix="/v1", tags=["async"])

_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


async def _job(request: Request, ctx: AppContext, response_id: str) -> JobRecord:
    token = bearer_token(request.headers.get("authorization", ""))
    job = await get_job(ctx.broker, response_id) if _ID_RE.match(response_id) else None
    spec = ctx.endpoints.items.get(job.endpoint) if job else None
    if spec is not None and spec.public:
        return job  # type: ignore[return-value]
    principal = await ctx.auth.authenticate(token)
    if job is None:
        raise NotFound(f"no request {response_id!r} (results are kept for a limited time)")
    if not principal.may_infer(job.endpoint):
        raise Forbidden(f"this token may not read requests of endpoint {job.endpoint!r}")
    return job


@router.get("/requests/{response_id}")
async def get_request(response_id: str, request: Request, ctx: ContextDep) -> dict[str, Any]:
    job = await _job(request, ctx, response_id)
    out: dict[str, Any] = {
        "response_id": job.response_id,
        "status": job.status.value,
        "endpoint": job.endpoint,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "replica_id": job.replica_id,
    }
    if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        out["response_url"] = f"{ctx.settings.base_url()}/v1/responses/{job.response_id}"
    if job.reason:
        out["reason"] = job.reason
    return out


@router.get("/responses/{response_id}")
async def get_response_body(response_id: str, request: Request, ctx: ContextDep) -> Response:
    """The stored response exactly as the replica returned it: status, headers, body."""
    job = await _job(request, ctx, response_id)
    reply = await get_response(ctx.broker, response_id)
    if reply is None:
        raise _NotReady(f"request {response_id!r} is {job.status.value}: no response yet")
    headers = {k: v for k, v in reply.headers if k.lower() not in NOT_RETURNED}
    if reply.replica_id:
        headers["x-berth-replica"] = reply.replica_id
    return Response(reply.body, status_code=reply.status, headers=headers)


class _NotReady(BerthError):
    status_code = 404
    code = "not_ready"
