"""Async jobs, OctoAI's way: poll ``/v1/requests/{id}``, then fetch ``/v1/responses/{id}``.

Berth adds: ``DELETE /v1/requests/{id}`` (cancel), the callback's delivery log
in the job's state and ``POST /v1/requests/{id}/callback`` (deliver it again),
and webhook signing secrets per token and per endpoint.

A job belongs to the token that submitted it: that token and admin tokens may
read, cancel and re-deliver it; any other token gets 404, as for an id that does
not exist, so ids are never confirmed. A job submitted without a token (on a
public endpoint) is reachable by its id alone (a random UUID). Without a valid
token, any other id is a 401.
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.auth import AdminDep, PrincipalDep, bearer_token
from api.callbacks import redeliver
from api.context import AppContext, ContextDep
from api.dataplane.asks import NOT_RETURNED
from api.jobs import job_view
from api.openapi import errors
from broker.jobs import apply, expire_if_due, get_job, get_response
from shared.errors import BerthError, Conflict, NotFound
from shared.lifecycle import LIVE, Cancelled, Refusal
from shared.messages import JobRecord, JobStatus

router = APIRouter(prefix="/v1", tags=["async"])

_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


async def _job(request: Request, ctx: AppContext, response_id: str) -> JobRecord:
    token = bearer_token(request.headers.get("authorization", ""))
    job = await get_job(ctx.broker, response_id) if _ID_RE.match(response_id) else None
    if job is not None and job.token_id is None:
        spec = ctx.endpoints.items.get(job.endpoint)
        if spec is not None and spec.public:
            return job  # anonymous, on a public endpoint: the id is the key
    principal = await ctx.auth.authenticate(token)
    if job is None or not (principal.is_admin or job.token_id == principal.token_id):
        raise NotFound(f"no request {response_id!r} (results are kept for a limited time)")
    return job


@router.get("/requests/{response_id}")
async def get_request(response_id: str, request: Request, ctx: ContextDep) -> dict[str, Any]:
    """The job's state; while pending, its queue position, estimated wait and what it waits for."""
    job = await expire_if_due(ctx.broker, await _job(request, ctx, response_id))
    return await job_view(ctx, job)


@router.delete("/requests/{response_id}", responses=errors(409))
async def cancel_request(response_id: str, request: Request, ctx: ContextDep) -> dict[str, Any]:
    """Cancel a job: queued, it never runs; running, its replica's answer is not waited for."""
    job = await _job(request, ctx, response_id)
    done = await apply(ctx.broker, response_id, Cancelled(at=time.time()))
    if done is None:
        raise NotFound(f"no request {response_id!r} (results are kept for a limited time)")
    if isinstance(done, Refusal):
        if done.job.status is JobStatus.CANCELLED:
            return await job_view(ctx, done.job)  # cancelling twice is not an error
        raise Conflict(f"request {response_id!r} has ended already ({done.job.status.value})")
    await ctx.requester.cancel(job.endpoint, response_id, job.seq)
    return await job_view(ctx, done)


@router.post("/requests/{response_id}/callback", responses=errors(409))
async def redeliver_callback(response_id: str, request: Request, ctx: ContextDep) -> dict[str, Any]:
    """Deliver a finished job's callback again (after a receiver outage, say)."""
    job = await _job(request, ctx, response_id)
    if job.callback is None:
        raise NotFound(f"request {response_id!r} has no callback_url")
    if job.status in LIVE:
        raise Conflict(f"request {response_id!r} has not ended: its callback is not due yet")
    updated = await redeliver(ctx, job)
    return await job_view(ctx, updated or job)


@router.get("/responses/{response_id}")
async def get_response_body(response_id: str, request: Request, ctx: ContextDep) -> Response:
    """The stored response exactly as the replica returned it: status, headers, body."""
    job = await _job(request, ctx, response_id)
    if job.status in (JobStatus.CANCELLED, JobStatus.EXPIRED):
        raise _Gone(f"request {response_id!r} was {job.status.value}: it has no response")
    reply = await get_response(ctx.broker, response_id)
    if reply is None:
        raise _NotReady(f"request {response_id!r} is {job.status.value}: no response yet")
    headers = {k: v for k, v in reply.headers if k.lower() not in NOT_RETURNED}
    if reply.replica_id:
        headers["x-berth-replica"] = reply.replica_id
    return Response(reply.body, status_code=reply.status, headers=headers)


# -- webhook signing secrets ---------------------------------------------------------------


@router.get("/webhook-secret", tags=["callbacks"])
async def my_webhook_secret(principal: PrincipalDep, ctx: ContextDep) -> dict[str, Any]:
    """The secret that signs callbacks of jobs this token submits (unless the endpoint has one)."""
    secret = await ctx.webhooks.current(f"token.{principal.token_id}", create=True)
    return {"secret": secret}


@router.post("/webhook-secret/rotate", tags=["callbacks"])
async def rotate_my_webhook_secret(principal: PrincipalDep, ctx: ContextDep) -> dict[str, Any]:
    """A new secret; the old one also signs for ``BERTH_WEBHOOK_SECRET_GRACE`` seconds."""
    return await ctx.webhooks.rotate(
        f"token.{principal.token_id}", ctx.settings.webhook_secret_grace
    )


def _endpoint_key(ctx: AppContext, name: str) -> str:
    if name not in ctx.endpoints.items:
        raise NotFound(f"endpoint {name!r} does not exist")
    return f"endpoint.{name}"


@router.get("/endpoint/{name}/webhook-secret", tags=["callbacks"], dependencies=[AdminDep])
async def endpoint_webhook_secret(name: str, ctx: ContextDep) -> dict[str, Any]:
    """The endpoint's signing secret (it signs every callback of the endpoint), or null."""
    return {"secret": await ctx.webhooks.current(_endpoint_key(ctx, name))}


@router.post("/endpoint/{name}/webhook-secret", tags=["callbacks"], dependencies=[AdminDep])
async def rotate_endpoint_webhook_secret(name: str, ctx: ContextDep) -> dict[str, Any]:
    """Create or rotate the endpoint's signing secret."""
    return await ctx.webhooks.rotate(_endpoint_key(ctx, name), ctx.settings.webhook_secret_grace)


class _NotReady(BerthError):
    status_code = 404
    code = "not_ready"


class _Gone(BerthError):
    status_code = 410
    code = "gone"
