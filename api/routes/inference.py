"""The data plane: any method, path, query and body on ``/e/<endpoint>/<path>``.

The request goes into JetStream (``berth.req.<endpoint>``); a replica's agent
pulls it, calls the replica and replies to this instance's inbox. The caller
gets the replica's own status, headers and body.

This is a raw ASGI app served beside FastAPI, not inside it (see api/app.py):
it is the hot path, so it builds no framework request or response objects and
runs no dependency injection or validation. docs/performance.md has the profile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from api.context import AppContext
from broker.envelope import RequestEnvelope
from broker.jobs import put_job
from broker.streams import backlog
from shared import names
from shared.errors import (
    BerthError,
    BodyTooLarge,
    EndpointDisabled,
    Forbidden,
    NotFound,
    QueueFull,
    UpstreamTimeout,
)
from shared.messages import EndpointSpec, JobRecord
from shared.names import ENDPOINT_NAME_RE

__all__ = ["NOT_RETURNED", "DataPlane"]

log = logging.getLogger(__name__)

# Never forwarded to a replica: transport headers, and Berth's own credentials.
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"authorization",
        b"proxy-authorization",
        b"x-octoai-async",
    }
)
# The API's own server adds these; the replica's copies would be duplicates.
NOT_RETURNED = frozenset({"content-length", "date", "server", "connection", "transfer-encoding"})
# Room left in a NATS message for the envelope's headers.
_HEADER_ROOM = 64 * 1024


class DataPlane:
    """The ASGI app for ``/e/...``; ``context()`` gives the resources the lifespan opened."""

    def __init__(self, context: Callable[[], AppContext]):
        self._context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, headers, body = await self._serve(self._context(), scope, receive, send)
        except BerthError as exc:
            status = exc.status_code
            headers = [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()
            ]
            headers.append((b"content-type", b"application/json"))
            body = orjson.dumps(exc.to_json())
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _serve(
        self, ctx: AppContext, scope: Scope, receive: Receive, send: Send
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        # /e/<endpoint>[/<path>]
        _, _, rest = scope["path"].partition("/e/")
        name, slash, path = rest.partition("/")
        spec = ctx.endpoints.items.get(name) if ENDPOINT_NAME_RE.match(name) else None

        forwarded: list[tuple[str, str]] = []
        token: str | None = None
        declared = -1
        traceparent: str | None = None
        is_async = False
        for key, value in scope["headers"]:
            if key == b"x-octoai-async":
                is_async = bool(value.strip())  # OctoAI's clients send it empty for sync
            elif key == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                token = credential.strip() if scheme.lower() == "bearer" else None
            elif key == b"content-length":
                declared = int(value) if value.isdigit() else -1
            elif key not in _NOT_FORWARDED:
                if key == b"traceparent":
                    traceparent = value.decode("latin-1")
                forwarded.append((key.decode("latin-1"), value.decode("latin-1")))
        if spec is None:
            await ctx.auth.authenticate(token)  # whether an endpoint exists is not public
            raise NotFound(f"endpoint {name!r} does not exist")
        if not spec.public and not (await ctx.auth.authenticate(token)).may_infer(name):
            raise Forbidden(f"this token may not call endpoint {name!r}")
        if spec.disabled:
            raise EndpointDisabled(f"endpoint {name!r} is disabled")
        if spec.max_queue_length is not None:
            waiting = await backlog(ctx.broker, name)
            if waiting is not None and waiting.queued >= spec.max_queue_length:
                raise QueueFull(
                    f"endpoint {name!r} has {waiting.queued} requests queued (max_queue_length "
                    f"{spec.max_queue_length})",
                    headers={"Retry-After": "1"},
                )

        limit = min(ctx.settings.max_body_bytes, ctx.broker.max_payload - _HEADER_ROOM)
        if declared > limit:
            raise BodyTooLarge(f"request body is over the {limit}-byte limit")
        body = await _read_body(receive, limit)

        request_id: str = scope["state"]["request_id"]
        if is_async:
            return await _submit_job(
                ctx, spec, scope, slash + path if slash else "/", forwarded, body, traceparent
            )
        timeout = spec.request_timeout
        requester = ctx.requester
        envelope = RequestEnvelope(
            request_id=request_id,
            method=scope["method"],
            path=slash + path if slash else "/",
            query=scope["query_string"].decode("latin-1"),
            headers=forwarded,
            deadline=time.time() + timeout,
            reply_to=requester.reply_subject(request_id),
            traceparent=traceparent,
        )
        waiter = requester.expect(request_id)
        try:
            await requester.publish(name, envelope, body, spec.replica_digest())
            try:
                async with asyncio.timeout(timeout):
                    reply = await waiter
            except TimeoutError:
                raise UpstreamTimeout(
                    f"endpoint {name!r} gave no answer within {timeout:g} s"
                ) from None
        finally:
            requester.forget(request_id)

        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in reply.headers
            if k.lower() not in NOT_RETURNED
        ]
        if reply.replica_id:
            headers.append((b"x-berth-replica", reply.replica_id.encode()))
        return reply.status, headers, reply.body


async def _submit_job(
    ctx: AppContext,
    spec: EndpointSpec,
    scope: Scope,
    path: str,
    forwarded: list[tuple[str, str]],
    body: bytes,
    traceparent: str | None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Queue the request as a job: 202 with OctoAI's ``{response_id, poll_url}`` at once."""
    request_id: str = scope["state"]["request_id"]
    endpoint = spec.name
    envelope = RequestEnvelope(
        request_id=request_id,
        method=scope["method"],
        path=path,
        query=scope["query_string"].decode("latin-1"),
        headers=forwarded,
        reply_to=names.result_subject(request_id),
        traceparent=traceparent,
    )
    # The state first: a fast replica may finish the job before this returns.
    await put_job(ctx.broker, JobRecord(response_id=request_id, endpoint=endpoint))
    await ctx.requester.publish(endpoint, envelope, body, spec.replica_digest())
    poll_url = f"{ctx.settings.base_url()}/v1/requests/{request_id}"
    payload = orjson.dumps({"response_id": request_id, "poll_url": poll_url})
    headers = [(b"content-type", b"application/json"), (b"location", poll_url.encode())]
    return 202, headers, payload


def _error(exc: BerthError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    headers.append((b"content-type", b"application/json"))
    return exc.status_code, headers, orjson.dumps(exc.to_json())


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk: Any = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is over the {limit}-byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Disconnected(BerthError):
    status_code = 499
    code = "client_disconnected"

    def __init__(self) -> None:
        super().__init__("the client went away")
