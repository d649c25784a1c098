"""Callbacks: a signed POST to the caller's URL when a job ends, retried for hours.

Durability is JetStream's: a job with a callback has one message on
``berth.cb.<id>`` (the BERTH_CALLBACKS work queue, see broker/callbacks.py),
acked only when the delivery succeeded or was given up. A failed attempt naks
it with the delay tenacity's policy gives for that attempt, so retries outlive
any API process, and every API instance's :class:`Dispatcher` shares the queue.

The body is a Standard Webhooks event, ``{"type": "request.<status>",
"timestamp", "data"}``, where ``data`` is what ``GET /v1/requests/{id}`` shows,
plus the response itself when it is JSON or text of at most 256 KiB. It is
signed with the endpoint's webhook secret if it has one, else the submitting
token's (see :class:`WebhookSecrets`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from tenacity import RetryCallState, wait_exponential, wait_random

from api.context import AppContext
from api.jobs import job_view
from broker.callbacks import CallbackQueue
from broker.jobs import apply, get_job, get_response, request_callback
from shared.egress import (
    BlockedAddress,
    blocked_reason,
    guarded_client,
    http_url,
    literal_address,
)
from shared.errors import InvalidRequest
from shared.lifecycle import CallbackAgain, CallbackTried
from shared.messages import CallbackAttempt, CallbackState, JobRecord
from shared.metrics import CALLBACKS
from shared.stores import Kind, SecretStore
from shared.webhooks import new_secret, sign
from workers import tracing

__all__ = ["Dispatcher", "WebhookSecrets", "check_callback_url", "redeliver"]

log = logging.getLogger(__name__)

MAX_URL = 2048
INLINE_RESPONSE = 256 * 1024
# Receivers that answer 410 Gone want no more deliveries (as Standard Webhooks senders do).
GIVE_UP_STATUS = frozenset({410})


def check_callback_url(url: str, *, allow_private: bool) -> str:
    """A callback URL must be absolute http(s) with a host and no credentials; 422 otherwise."""
    parts = http_url(url, "callback_url", MAX_URL)
    assert parts.hostname is not None
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("callback_url must not carry credentials; use the webhook signature")
    if not allow_private:
        # What a name resolves to is checked again at each delivery (shared/egress.py);
        # here, what needs no lookup: addresses in any spelling, and localhost's names.
        host = parts.hostname.rstrip(".")
        ip = literal_address(host)
        reason = blocked_reason(ip) if ip is not None else None
        if reason is None and (host == "localhost" or host.endswith(".localhost")):
            reason = "localhost"
        if reason is not None:
            raise InvalidRequest(
                f"callback_url points to {reason}: callers may not reach it "
                "(BERTH_CALLBACK_ALLOW_PRIVATE is off)"
            )
    return url


class WebhookSecrets:
    """Signing secrets, kept in the secret store as kind ``webhook``.

    ``endpoint.<name>`` signs every callback of that endpoint; otherwise
    ``token.<id>`` signs the callbacks of jobs that token submitted (made on
    first use). Rotating keeps the previous secret in force for ``grace``
    seconds: deliveries then carry both signatures.
    """

    def __init__(self, store: SecretStore):
        self._store = store

    async def _get(self, key: str) -> dict[str, str] | None:
        found = await self._store.get(Kind.WEBHOOK, key)
        return found.data if found else None

    async def current(self, key: str, *, create: bool = False) -> str | None:
        data = await self._get(key)
        if data is None and create:
            await self._store.create(Kind.WEBHOOK, key, {"current": new_secret()})
            data = await self._get(key)  # whoever created it first, this is the secret
        return data["current"] if data else None

    async def rotate(self, key: str, grace: float) -> dict[str, Any]:
        data = await self._get(key)
        fresh: dict[str, str] = {"current": new_secret()}
        if data is not None:
            fresh |= {"previous": data["current"], "previous_until": repr(time.time() + grace)}
            await self._store.update(Kind.WEBHOOK, key, fresh)
        else:
            await self._store.create(Kind.WEBHOOK, key, fresh)
        out: dict[str, Any] = {"secret": fresh["current"]}
        if "previous_until" in fresh:
            out["previous_valid_until"] = float(fresh["previous_until"])
        return out

    async def in_force(self, job: JobRecord) -> list[str]:
        for key in (f"endpoint.{job.endpoint}", f"token.{job.token_id}" if job.token_id else ""):
            data = await self._get(key) if key else None
            if data is not None:
                keys = [data["current"]]
                if "previous" in data and float(data.get("previous_until", 0)) > time.time():
                    keys.append(data["previous"])
                return keys
        return []


def _inline(
    reply_headers: list[tuple[str, str]], body: bytes, status: int
) -> dict[str, Any] | None:
    if len(body) > INLINE_RESPONSE:
        return None
    ctype = next((v for k, v in reply_headers if k.lower() == "content-type"), "")
    if "json" in ctype:
        try:
            return {"status": status, "content_type": ctype, "body": orjson.loads(body)}
        except orjson.JSONDecodeError:
            return None
    if ctype.startswith("text/"):
        return {"status": status, "content_type": ctype, "body": body.decode("utf-8", "replace")}
    return None


class Dispatcher:
    """Delivers due callbacks; one per API process, sharing the durable queue."""

    def __init__(self, ctx: AppContext, *, concurrency: int = 16):
        self._ctx = ctx
        self._secrets = ctx.webhooks
        self._concurrency = concurrency
        settings = ctx.settings
        backoff = settings.callback_backoff
        self._wait = wait_exponential(multiplier=backoff, max=3600) + wait_random(0, backoff / 2)
        self._client = guarded_client(
            allow_private=settings.callback_allow_private,
            timeout=settings.callback_timeout,
            headers={"user-agent": "Berth-Webhooks/1"},
        )
        self._queue = CallbackQueue(
            ctx.broker,
            self._attempt,
            ack_wait=settings.callback_timeout * 2 + 5,
            concurrency=concurrency,
        )

    async def start(self) -> None:
        await self._queue.start()

    async def stop(self) -> None:
        await self._queue.stop()
        await self._client.aclose()

    def delay(self, attempt: int) -> float:
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self._wait(state))

    async def _attempt(self, response_id: str, handed_out: int) -> float | None:
        try:
            return await self.deliver(response_id)
        except Exception:
            log.exception("callback for %s failed unexpectedly", response_id)
            return self.delay(handed_out)

    async def deliver(self, response_id: str) -> float | None:
        """One attempt; None when done with (delivered, given up, nothing to do), else the retry delay."""
        job = await get_job(self._ctx.broker, response_id)
        if job is None or job.callback is None or job.callback.state is not CallbackState.PENDING:
            return None
        if not job.status.terminal:
            return 0.5  # its final state is being written
        body = orjson.dumps(await self._payload(job))
        keys = await self._secrets.in_force(job)
        headers = sign(keys, f"msg_{job.response_id}", int(time.time()), body) if keys else {}
        headers["content-type"] = "application/json"
        span = _attempt_span(job) if tracing.ENABLED and job.traceparent else None
        if span is not None:  # the receiver may join the request's trace
            headers["traceparent"] = span.traceparent
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        blocked = False
        try:
            resp = await self._client.post(job.callback.url, content=body, headers=headers)
            status = resp.status_code
        except BlockedAddress as exc:
            error = f"refused: {exc}"[:500]  # never connected: nothing learnt of the target
            blocked = True
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        answered_ns = time.time_ns()  # the attempt's span ends here, not after its record
        attempt = CallbackAttempt(
            at=time.time(),
            status=status,
            error=error,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        ok = status is not None and 200 <= status < 300
        attempts = job.callback.attempts + 1
        finished = job.finished_at or time.time()
        give_up = (
            blocked
            or status in GIVE_UP_STATUS
            or (time.time() - finished > self._ctx.settings.callback_retry_for)
        )
        delay = None if ok or give_up else self.delay(attempts)

        tried = CallbackTried(
            attempt=attempt,
            delivered=ok,
            given_up=give_up,
            next_at=attempt.at + delay if delay is not None else None,
        )
        await apply(self._ctx.broker, response_id, tried)
        outcome = "delivered" if ok else "failed" if give_up else "retry"
        CALLBACKS.labels(job.endpoint, outcome).inc()
        with tracing.use(span) if span is not None else contextlib.nullcontext():
            log.info(
                "callback %s → %s: %s (attempt %d)",
                response_id,
                job.callback.url,
                status or error,
                attempts,
            )
        if span is not None:
            _end_attempt_span(span, status, error, answered_ns)
        return delay

    async def _payload(self, job: JobRecord) -> dict[str, Any]:
        data = await job_view(self._ctx, job)
        data.pop("callback", None)
        if data.get("response_url"):
            reply = await get_response(self._ctx.broker, job.response_id)
            if reply is not None:
                inline = _inline(reply.headers, reply.body, reply.status)
                if inline is not None:
                    data["response"] = inline
        return {
            "type": f"request.{job.status.value}",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "data": data,
        }


async def redeliver(ctx: AppContext, job: JobRecord) -> JobRecord | None:
    """Send a finished job's callback again (a fresh message; the log keeps earlier attempts)."""

    updated = await apply(ctx.broker, job.response_id, CallbackAgain())
    if not isinstance(updated, JobRecord):
        return None
    assert updated.callback is not None
    await request_callback(ctx.broker, updated, attempt=updated.callback.attempts + 1)
    return updated


def _attempt_span(job: JobRecord) -> tracing.Span:
    """A CLIENT span for one delivery attempt, in the trace of the request that made the job."""
    assert job.callback is not None
    url = httpx.URL(job.callback.url)
    return tracing.start(
        "POST",
        job.traceparent or "",
        kind=tracing.CLIENT,
        attributes={
            "http.request.method": "POST",
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            "url.scheme": url.scheme,
            "berth.endpoint": job.endpoint,
            "berth.request_id": job.response_id,
            "berth.attempt": job.callback.attempts + 1,
        },
    )


def _end_attempt_span(
    span: tracing.Span, status: int | None, error: str | None, end_ns: int
) -> None:
    if status is not None:
        span.attributes["http.response.status_code"] = status
    if error is not None or status is None or status >= 400:
        span.attributes["error.type"] = str(status) if status else "connection"
        span.set_error(error or "")
    span.end(end_ns)
