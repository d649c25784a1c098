"""The data plane: any method, path, query and body on ``/e/<endpoint>/<path>``.

The request goes into JetStream (``berth.req.<endpoint>``); a replica's agent
pulls it, calls the replica and replies to this instance's inbox. The caller
gets the replica's own status, headers and body. Four ways to ask:

- sync (the default): wait for the answer; a caller that hangs up cancels it;
- async (``X-OctoAI-Async: 1``, ``Prefer: respond-async``, or a callback URL):
  202 with ``{response_id, poll_url}`` at once, the job's state in NATS;
- sync with a wait budget (``Prefer: wait=N``): a job, answered inline if it
  ends within N seconds, else 202 with ``Location``;
- streamed (``Accept: text/event-stream``): the replica's chunks as they come.

This is a raw ASGI app served beside FastAPI, not inside it (see api/app.py):
it is the hot path, so it builds no framework request or response objects and
runs no dependency injection or validation. docs/performance.md has the profile.

Here: finding the endpoint, the caller's token, admission (body size, queue
length) and the choice of mode. The parts are in :mod:`api.dataplane`: ``asks``
(Berth's headers and what passes to and from a replica), ``modes`` (sync and
streamed), ``jobs`` (async, idempotency, callback signers).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from api.callbacks import check_callback_url
from api.context import AppContext
from api.dataplane.asks import (
    HEADERS_CHECKED_OVER,
    NOT_FORWARDED,
    Ask,
    error_answer,
    idempotency_value,
    parse_deadline,
    parse_prefer,
    read_body,
    send_whole,
    take_callback,
)
from api.dataplane.jobs import submit_job
from api.dataplane.modes import answer_stream, answer_sync
from api.http import Answer
from api.queue_limit import QueueLimit
from broker.connection import NATS_ERRORS, unavailable
from broker.envelope import RequestEnvelope
from shared.errors import (
    BerthError,
    BodyTooLarge,
    EndpointDisabled,
    Forbidden,
    NotFound,
)
from shared.names import ENDPOINT_NAME_RE
from workers import tracing

__all__ = ["DataPlane"]


class DataPlane:
    """The ASGI app for ``/e/...``; ``context()`` gives the resources the lifespan opened."""

    def __init__(self, context: Callable[[], AppContext]):
        self._context = context
        self._queue_limit = QueueLimit()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self.answer(scope, receive, send)
        if answer is not None:  # None: streamed, sent already
            await send_whole(send, *answer)

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> Answer | None:
        """The whole answer (status, headers, body) for the caller's server to write;
        None when it was streamed through ``send`` already. A Berth error is an answer too.

        The API's own HTTP protocol calls this directly (api/http.py); any other
        ASGI server goes through ``__call__``.
        """
        ctx = self._context()
        if tracing.ENABLED:
            return await self._traced(ctx, scope, receive, send)
        return await self._answer(ctx, scope, receive, send)

    async def _traced(
        self, ctx: AppContext, scope: Scope, receive: Receive, send: Send
    ) -> Answer | None:
        """The answer inside the request's SERVER span (a child of the caller's
        ``traceparent``); the agent's and the replica's spans are its children."""
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), ""
        )
        method = scope["method"]
        span = tracing.start(
            f"{method} /e/{{endpoint_name}}/{{route}}",
            incoming,
            kind=tracing.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": "/e/{endpoint_name}/{route}",
                "url.path": scope["path"],
                "berth.endpoint": scope["path"][3:].partition("/")[0],
                "berth.request_id": scope["state"]["request_id"],
            },
        )
        token = tracing.enter(span)
        try:
            answer = await self._answer(ctx, scope, receive, send)
            status = answer[0] if answer is not None else 200
            span.attributes["http.response.status_code"] = status
            if status >= 500:
                span.set_error()
            return answer
        finally:
            tracing.leave(token)
            span.end()

    async def _answer(
        self, ctx: AppContext, scope: Scope, receive: Receive, send: Send
    ) -> Answer | None:
        began = time.perf_counter()
        answer: Answer | None
        try:
            answer = await self._serve(ctx, scope, receive, send)
        except BerthError as exc:
            answer = error_answer(exc)
        except NATS_ERRORS as exc:  # a restart, a lost connection: an outage, not a bug
            answer = error_answer(unavailable(exc))
        # A stream counts when it ends, as 200 (its status was sent before its body); a
        # 202 is a job accepted.
        if answer is None:
            status, mode = 200, "stream"
        else:
            status = answer[0]
            mode = "async" if status == 202 else "sync"
        ctx.metrics.observe(scope["path"], status, time.perf_counter() - began, mode)
        return answer

    async def _serve(
        self, ctx: AppContext, scope: Scope, receive: Receive, send: Send
    ) -> Answer | None:
        # /e/<endpoint>[/<path>]
        _, _, rest = scope["path"].partition("/e/")
        name, slash, path = rest.partition("/")
        spec = ctx.endpoints.items.get(name) if ENDPOINT_NAME_RE.match(name) else None

        forwarded: list[tuple[str, str]] = []
        token: str | None = None
        declared = -1
        traceparent: str | None = None
        ask = Ask()
        deadline_header: str | None = None
        header_bytes = 0
        for key, value in scope["headers"]:
            header_bytes += len(value)
            if key == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                token = credential.strip() if scheme.lower() == "bearer" else None
            elif key == b"content-length":
                declared = int(value) if value.isdigit() else -1
            elif key not in NOT_FORWARDED:
                if key == b"traceparent":
                    traceparent = value.decode("latin-1")
                elif key == b"accept" and b"text/event-stream" in value:
                    ask.stream = True
                forwarded.append((key.decode("latin-1"), value.decode("latin-1")))
            elif key == b"x-octoai-async":
                ask.is_async = ask.is_async or bool(value.strip())  # empty means sync
            elif key == b"prefer":
                parse_prefer(value.decode("latin-1"), ask)
            elif key == b"idempotency-key":
                ask.idempotency_key = idempotency_value(value)
            elif key == b"x-berth-deadline":
                deadline_header = value.decode("latin-1")
            elif key == b"x-berth-callback-url":
                ask.callback_url = value.decode("latin-1").strip()
        if tracing.ENABLED:  # the next hop's parent is this request's own span
            own = tracing.current()
            traceparent = own.traceparent if own is not None else traceparent
        if spec is None:
            await ctx.auth.authenticate(token)  # whether an endpoint exists is not public
            raise NotFound(f"endpoint {name!r} does not exist")
        token_id: str | None = None
        if not spec.public:
            principal = await ctx.auth.authenticate(token)
            if not principal.may_infer(name):
                raise Forbidden(f"this token may not call endpoint {name!r}")
            token_id = principal.token_id
        if spec.disabled:
            raise EndpointDisabled(f"endpoint {name!r} is disabled")
        if spec.max_queue_length is not None:
            await self._queue_limit.admit(ctx.broker, name, spec.max_queue_length)

        if ask.wait is None and not ask.is_async and not ask.stream:
            ask.wait = spec.sync_wait  # the endpoint's own wait budget, if it has one
        query = scope["query_string"].decode("latin-1")
        query, callback_query = take_callback(query)
        ask.callback_url = ask.callback_url or callback_query
        now = time.time()
        if deadline_header is not None:
            ask.deadline = parse_deadline(deadline_header, now)
        if ask.callback_url is not None:
            check_callback_url(ask.callback_url, allow_private=ctx.settings.callback_allow_private)
            if ask.wait is None:
                ask.is_async = True  # a callback is for a job
        limit = ctx.settings.max_body_bytes  # larger than a NATS message: see broker/bodies.py
        if declared > limit:
            raise BodyTooLarge(f"request body is over the {limit}-byte limit")
        body = await read_body(receive, limit)

        envelope = RequestEnvelope(
            request_id=scope["state"]["request_id"],
            method=scope["method"],
            path=slash + path if slash else "/",
            query=query,
            headers=forwarded,
            traceparent=traceparent,
        )
        if header_bytes > HEADERS_CHECKED_OVER:
            envelope.check_fits()  # 431 before anything is queued or recorded
        if ask.is_async or ask.wait is not None:
            if token_id is None and token is not None:
                # A job belongs to the token that made it, on a public endpoint too.
                token_id = (await ctx.auth.authenticate(token)).token_id
            return await submit_job(ctx, spec, envelope, body, ask, token_id)
        timeout = spec.request_timeout
        envelope.deadline = min(ask.deadline or now + timeout, now + timeout)
        if ask.stream:
            envelope.stream = True
            await answer_stream(ctx, spec, envelope, body, scope, receive, send)
            return None
        return await answer_sync(ctx, spec, envelope, body, scope, receive)
