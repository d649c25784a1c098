"""The async mode: a request queued as a job (202 with ``{response_id, poll_url}``), its
Idempotency-Key, its callback's signer, and ``Prefer: wait=N`` answered inline."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time

import orjson

from api.context import AppContext
from api.dataplane.asks import (
    Ask,
    reply_headers,
)
from api.http import Answer
from broker.bodies import resolve
from broker.envelope import Reply, RequestEnvelope
from broker.jetstream import backlog
from broker.jobs import (
    answered,
    apply,
    claim_idempotency,
    create_job,
    release_idempotency,
    watch_result,
)
from shared import names
from shared.errors import (
    BerthError,
    InvalidRequest,
)
from shared.lifecycle import Placed
from shared.messages import CallbackLog, EndpointSpec, JobRecord
from workers import tracing


def idempotency_key(endpoint: str, token_id: str | None, key: str) -> str:
    """Keys are per endpoint and per caller: another token's same key is another job."""
    raw = f"{endpoint}\0{token_id or '-'}\0{key}".encode()
    return hashlib.sha256(raw).hexdigest()


def accepted(ctx: AppContext, response_id: str) -> Answer:
    poll_url = f"{ctx.settings.base_url()}/v1/requests/{response_id}"
    payload = orjson.dumps({"response_id": response_id, "poll_url": poll_url})
    headers = [(b"content-type", b"application/json"), (b"location", poll_url.encode())]
    return 202, headers, payload


async def submit_job(
    ctx: AppContext,
    spec: EndpointSpec,
    envelope: RequestEnvelope,
    body: bytes,
    ask: Ask,
    token_id: str | None,
) -> Answer:
    """Queue the request as a job: 202 with OctoAI's ``{response_id, poll_url}``.

    With ``Prefer: wait=N``, the answer comes inline if the job ends within N s.
    """
    broker = ctx.broker
    endpoint = spec.name
    request_id = envelope.request_id
    idem: str | None = None
    if ask.idempotency_key is not None:
        idem = idempotency_key(endpoint, token_id, ask.idempotency_key)
        digest = hashlib.sha256(body).hexdigest()
        claim = orjson.dumps({"response_id": request_id, "body_sha256": digest})
        earlier = await claim_idempotency(broker, idem, claim)
        if earlier is not None:
            found = orjson.loads(earlier)
            if found.get("body_sha256") != digest:
                raise IdempotencyReused(
                    "this Idempotency-Key was used with a different request body"
                )
            return accepted(ctx, found["response_id"])
    if ask.callback_url is not None:
        # Someone must sign it: the endpoint's secret, else the caller's (made on first use).
        if token_id is not None:
            await ctx.webhooks.current(f"token.{token_id}", create=True)
        elif await ctx.webhooks.current(f"endpoint.{endpoint}") is None:
            raise InvalidRequest(
                "a callback_url on an anonymous request needs the endpoint's webhook secret "
                "(POST /v1/endpoint/{name}/webhook-secret), or a bearer token"
            )
    envelope.reply_to = names.result_subject(request_id)
    now = time.time()
    deadline = ask.deadline or now + ctx.settings.result_ttl
    envelope.deadline = deadline
    job = JobRecord(
        response_id=request_id,
        endpoint=endpoint,
        created_at=now,
        deadline=deadline,
        token_id=token_id,
        callback=CallbackLog(url=ask.callback_url) if ask.callback_url else None,
        traceparent=envelope.traceparent,
    )
    async with contextlib.AsyncExitStack() as stack:
        result: asyncio.Future[Reply] | None = None
        try:
            # The state first: a fast replica may finish the job before this returns.
            revision = await create_job(broker, job)
            if ask.wait:  # watched from before it is queued, so the answer cannot slip past
                result = await stack.enter_async_context(watch_result(broker, request_id))
            seq = await ctx.requester.publish(endpoint, envelope, body, spec.replica_digest())
        except BaseException:
            if idem is not None:
                await release_idempotency(broker, idem)
            raise
        await note_place(ctx, job, revision, seq)
        if ask.deadline is not None:
            ctx.deadlines.schedule(request_id, deadline)
        if result is None:
            return accepted(ctx, request_id)
        try:
            async with asyncio.timeout(ask.wait):
                reply = await result
        except TimeoutError:
            return accepted(ctx, request_id)  # still running: poll, as for any job
    # The reply is stored; its job may not say so yet: whoever writes it first, it ends once.
    await apply(broker, request_id, answered(reply))
    reply = await resolve(broker, reply, drop=False)
    headers = reply_headers(reply)
    headers.append((b"x-berth-response-id", request_id.encode()))
    return reply.status, headers, reply.body


async def note_place(ctx: AppContext, job: JobRecord, revision: int, seq: int) -> None:
    """Keep the job's sequence (to cancel it) and what was queued ahead (for its position)."""
    waiting = await backlog(ctx.broker, job.endpoint)
    ahead = max(0, waiting.queued - 1) if waiting else None  # less this job itself
    span = tracing.current() if tracing.ENABLED else None
    if span is not None and ahead is not None:
        span.set_attribute("berth.queue_position", ahead)
    delivered = waiting.delivered if waiting else None
    placed = Placed(seq=seq, queued_ahead=ahead, delivered_mark=delivered)
    # Usually nobody wrote the job since it was made: no read needed.
    await apply(ctx.broker, job.response_id, placed, known=(job, revision))


class IdempotencyReused(BerthError):
    status_code = 422
    code = "idempotency_key_reused"
