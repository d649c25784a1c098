"""The data plane: any method, path, query and body on ``/e/<endpoint>/<path>``.

The request goes into JetStream (``berth.req.<endpoint>``); a replica's agent
pulls it, calls the replica and replies to this instance's inbox. The caller
gets the replica's own status, headers and body. A plain Starlette route: no
dependency injection or validation work on the hot path.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.auth import bearer_token, is_admin
from api.context import AppContext
from broker.envelope import RequestEnvelope
from shared.errors import AuthError, BodyTooLarge, EndpointDisabled, NotFound, UpstreamTimeout

__all__ = ["routes"]

# Never forwarded to a replica: transport headers, and Berth's own credentials.
_NOT_FORWARDED = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
     "authorization", "proxy-authorization", "x-octoai-async"}
)
# The API's own server adds these; the replica's copies would be duplicates.
_NOT_RETURNED = frozenset({"content-length", "date", "server"})
# Room left in a NATS message for the envelope's headers.
_HEADER_ROOM = 64 * 1024
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def proxy(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    name: str = request.path_params["endpoint"]
    spec = ctx.endpoints.items.get(name)
    if spec is None:
        raise NotFound(f"endpoint {name!r} does not exist")
    if not spec.public and not is_admin(bearer_token(request), ctx.settings.admin_token.get_secret_value()):  # type: ignore[union-attr]
        raise AuthError()
    if spec.disabled:
        raise EndpointDisabled(f"endpoint {name!r} is disabled")

    limit = min(ctx.settings.max_body_bytes, ctx.broker.max_payload - _HEADER_ROOM)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is over the {limit}-byte limit")
    body = await request.body()
    if len(body) > limit:
        raise BodyTooLarge(f"request body is over the {limit}-byte limit")

    request_id: str = request.state.request_id
    timeout = spec.request_timeout
    requester = ctx.requester
    envelope = RequestEnvelope(
        request_id=request_id,
        method=request.method,
        path="/" + request.path_params.get("path", ""),
        query=request.scope["query_string"].decode("latin-1"),
        headers=[(k, v) for k, v in request.headers.items() if k not in _NOT_FORWARDED],
        deadline=time.time() + timeout,
        reply_to=requester.reply_subject(request_id),
        traceparent=request.headers.get("traceparent"),
    )
    waiter = requester.expect(request_id)
    try:
        await requester.publish(name, envelope, body)
        try:
            async with asyncio.timeout(timeout):
                reply = await waiter
        except TimeoutError:
            raise UpstreamTimeout(f"endpoint {name!r} gave no answer within {timeout:g} s") from None
    finally:
        requester.forget(request_id)

    response = Response(content=reply.body, status_code=reply.status)
    raw = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in reply.headers
        if k.lower() not in _NOT_RETURNED
    ]
    if reply.replica_id:
        raw.append((b"x-berth-replica", reply.replica_id.encode()))
    response.raw_headers = [h for h in response.raw_headers if h[0] == b"content-length"] + raw
    return response


routes = [
    Route("/e/{endpoint}", proxy, methods=METHODS),
    Route("/e/{endpoint}/{path:path}", proxy, methods=METHODS),
]
