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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import orjson
from starlette.types import Message, Receive, Scope, Send

from api.callbacks import check_callback_url
from api.context import AppContext
from api.http import HANGUP, Answer
from api.queue_limit import QueueLimit
from broker.bodies import resolve
from broker.connection import NATS_ERRORS, unavailable
from broker.envelope import H, Reply, RequestEnvelope
from broker.jobs import (
    claim_idempotency,
    create_job,
    finish_with,
    modify,
    release_idempotency,
    watch_result,
)
from broker.streams import backlog
from broker.wire import Message as NatsMessage
from shared import names
from shared.errors import (
    BerthError,
    BodyTooLarge,
    EndpointDisabled,
    Forbidden,
    InvalidRequest,
    NotFound,
    UpstreamTimeout,
)
from shared.messages import CallbackLog, EndpointSpec, JobRecord
from shared.names import ENDPOINT_NAME_RE
from shared.waiting import wait_by
from workers import tracing

__all__ = ["NOT_RETURNED", "DataPlane"]

log = logging.getLogger(__name__)

# Never forwarded to a replica: transport headers, Berth's own credentials and controls.
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        # The API answers a caller's Expect itself (uvicorn sends 100 Continue when the
        # body is read); the whole body travels in the queue, so a replica has none to await.
        b"expect",
        b"authorization",
        # Only the agent speaks for a replica (workers/service.py: REPLICA_KEY_HEADER).
        b"x-berth-replica-key",
        b"proxy-authorization",
        b"x-octoai-async",
        b"prefer",
        b"idempotency-key",
        b"x-berth-deadline",
        b"x-berth-callback-url",
    }
)
# The API's own server adds these; the replica's copies would be duplicates.
NOT_RETURNED = frozenset({"content-length", "date", "server", "connection", "transfer-encoding"})
MAX_WAIT = 3600.0
MAX_IDEMPOTENCY_KEY = 255
# Headers whose values come to less than this always fit in the queue's header block.
_HEADERS_CHECKED_OVER = 32 * 1024


class _Ask:
    """What the caller asked for besides the request itself (Berth's own headers)."""

    __slots__ = ("callback_url", "deadline", "idempotency_key", "is_async", "stream", "wait")

    def __init__(self) -> None:
        self.is_async = False
        self.wait: float | None = None
        self.deadline: float | None = None
        self.idempotency_key: str | None = None
        self.callback_url: str | None = None
        self.stream = False


def _parse_prefer(value: str, ask: _Ask) -> None:
    """RFC 7240: ``respond-async`` makes a job; ``wait=N`` a job answered inline within N s."""
    for pref in value.split(","):
        token, _, arg = pref.strip().partition("=")
        token = token.strip().lower()
        if token == "respond-async":
            ask.is_async = True
        elif token == "wait":
            try:
                wait = float(arg.strip().strip('"'))
            except ValueError:
                raise InvalidRequest(f"Prefer: wait={arg!r} is not a number of seconds") from None
            if not 0 <= wait <= MAX_WAIT:
                raise InvalidRequest(f"Prefer: wait must be between 0 and {MAX_WAIT:g} seconds")
            ask.wait = wait


def _idempotency_value(raw: bytes) -> str | None:
    key = raw.decode("latin-1").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY:
        # Cutting it would make two different keys one job.
        raise InvalidRequest(f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY} characters")
    return key or None


def _parse_deadline(value: str, now: float) -> float:
    """``X-Berth-Deadline``: seconds from now, or an ISO 8601 time with its offset."""
    value = value.strip()
    try:
        seconds: float | None = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 < seconds < math.inf:  # also refuses nan
            raise InvalidRequest("X-Berth-Deadline must be a positive, finite number of seconds")
        deadline = now + seconds
    else:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                "X-Berth-Deadline must be seconds from now or an ISO 8601 time"
            ) from None
        if when.tzinfo is None:
            raise InvalidRequest("X-Berth-Deadline needs a time zone (e.g. 2026-01-01T12:00:00Z)")
        deadline = when.timestamp()
    if deadline <= now:
        raise InvalidRequest("X-Berth-Deadline has passed already")
    return deadline


def _take_callback(query: str) -> tuple[str, str | None]:
    """The ``callback_url`` query parameter is Berth's: taken out of what the replica sees
    (the other parameters stay byte for byte)."""
    if "callback_url=" not in query:
        return query, None
    kept, url = [], None
    for pair in query.split("&"):
        if pair.startswith("callback_url="):
            url = unquote_plus(pair.removeprefix("callback_url="))
        else:
            kept.append(pair)
    return "&".join(kept), url


class DataPlane:
    """The ASGI app for ``/e/...``; ``context()`` gives the resources the lifespan opened."""

    def __init__(self, context: Callable[[], AppContext]):
        self._context = context
        self._queue_limit = QueueLimit()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self.answer(scope, receive, send)
        if answer is not None:  # None: streamed, sent already
            await _send_whole(send, *answer)

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
        try:
            with tracing.use(span):
                answer = await self._answer(ctx, scope, receive, send)
            status = answer[0] if answer is not None else 200
            span.attributes["http.response.status_code"] = status
            if status >= 500:
                span.set_error()
            return answer
        finally:
            span.end()

    async def _answer(
        self, ctx: AppContext, scope: Scope, receive: Receive, send: Send
    ) -> Answer | None:
        began = time.perf_counter()
        answer: Answer | None
        try:
            answer = await self._serve(ctx, scope, receive, send)
        except BerthError as exc:
            answer = _error(exc)
        except NATS_ERRORS as exc:  # a restart, a lost connection: an outage, not a bug
            answer = _error(unavailable(exc))
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
        ask = _Ask()
        deadline_header: str | None = None
        header_bytes = 0
        for key, value in scope["headers"]:
            header_bytes += len(value)
            if key == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                token = credential.strip() if scheme.lower() == "bearer" else None
            elif key == b"content-length":
                declared = int(value) if value.isdigit() else -1
            elif key not in _NOT_FORWARDED:
                if key == b"traceparent":
                    traceparent = value.decode("latin-1")
                elif key == b"accept" and b"text/event-stream" in value:
                    ask.stream = True
                forwarded.append((key.decode("latin-1"), value.decode("latin-1")))
            elif key == b"x-octoai-async":
                ask.is_async = ask.is_async or bool(value.strip())  # empty means sync
            elif key == b"prefer":
                _parse_prefer(value.decode("latin-1"), ask)
            elif key == b"idempotency-key":
                ask.idempotency_key = _idempotency_value(value)
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
        query, callback_query = _take_callback(query)
        ask.callback_url = ask.callback_url or callback_query
        now = time.time()
        if deadline_header is not None:
            ask.deadline = _parse_deadline(deadline_header, now)
        if ask.callback_url is not None:
            check_callback_url(ask.callback_url, allow_private=ctx.settings.callback_allow_private)
            if ask.wait is None:
                ask.is_async = True  # a callback is for a job
        limit = ctx.settings.max_body_bytes  # larger than a NATS message: see broker/bodies.py
        if declared > limit:
            raise BodyTooLarge(f"request body is over the {limit}-byte limit")
        body = await _read_body(receive, limit)

        envelope = RequestEnvelope(
            request_id=scope["state"]["request_id"],
            method=scope["method"],
            path=slash + path if slash else "/",
            query=query,
            headers=forwarded,
            traceparent=traceparent,
        )
        if header_bytes > _HEADERS_CHECKED_OVER:
            envelope.check_fits()  # 431 before anything is queued or recorded
        if ask.is_async or ask.wait is not None:
            if token_id is None and token is not None:
                # A job belongs to the token that made it, on a public endpoint too.
                token_id = (await ctx.auth.authenticate(token)).token_id
            return await _job(ctx, spec, envelope, body, ask, token_id)
        timeout = spec.request_timeout
        envelope.deadline = min(ask.deadline or now + timeout, now + timeout)
        if ask.stream:
            envelope.stream = True
            await _stream(ctx, spec, envelope, body, scope, receive, send)
            return None
        return await _sync(ctx, spec, envelope, body, scope, receive)


def _reply_headers(reply: Reply) -> list[tuple[bytes, bytes]]:
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in reply.headers
        if k.lower() not in NOT_RETURNED
    ]
    if reply.replica_id:
        headers.append((b"x-berth-replica", reply.replica_id.encode()))
    return headers


async def _send_whole(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _no_answer(spec: EndpointSpec) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"endpoint {spec.name!r} gave no answer in time ({spec.request_timeout:g} s "
        "or the request's deadline)"
    )


class _Hangup:
    """Watches for the caller hanging up while it waits, and then calls ``on_hangup`` once.

    Through the API's HTTP protocol when it serves the request (a callback, see
    api/http.py), else through ``receive()``, as ASGI has it.
    """

    __slots__ = ("_task", "_watch")

    def __init__(self, scope: Scope, receive: Receive, on_hangup: Callable[[], None]):
        self._watch: Callable[[Callable[[], None] | None], None] | None = None
        self._task: asyncio.Future[Message] | None = None
        watch = scope.get("extensions", {}).get(HANGUP)
        if watch is not None:
            self._watch = watch
            watch(on_hangup)
            return
        self._task = asyncio.ensure_future(receive())

        def done(task: asyncio.Future[Message]) -> None:
            if task.cancelled() or task.exception() is not None:
                return
            if task.result()["type"] == "http.disconnect":
                on_hangup()

        self._task.add_done_callback(done)

    def close(self) -> None:
        if self._watch is not None:
            self._watch(None)
        elif self._task is not None:
            self._task.cancel()


async def _sync(
    ctx: AppContext,
    spec: EndpointSpec,
    envelope: RequestEnvelope,
    body: bytes,
    scope: Scope,
    receive: Receive,
) -> Answer:
    requester = ctx.requester
    request_id = envelope.request_id
    envelope.reply_to = requester.reply_subject(request_id)
    waiter = requester.expect(request_id)

    def hung_up() -> None:
        if not waiter.done():
            waiter.set_exception(_Disconnected())

    try:
        seq = await requester.publish(spec.name, envelope, body, spec.replica_digest())
        hangup = _Hangup(scope, receive, hung_up)
        try:
            left = envelope.deadline - time.time()
            reply = await wait_by(waiter, asyncio.get_running_loop().time() + left)
        except TimeoutError:
            await requester.cancel(spec.name, request_id, seq)  # nobody waits for it now
            raise _no_answer(spec) from None
        except _Disconnected:
            # Out of the queue if it is still there; stopped if a replica has it.
            await requester.cancel(spec.name, request_id, seq)
            raise
        finally:
            hangup.close()
    finally:
        requester.forget(request_id)
    reply = await resolve(ctx.broker, reply, drop=True)
    return reply.status, _reply_headers(reply), reply.body


async def _stream(
    ctx: AppContext,
    spec: EndpointSpec,
    envelope: RequestEnvelope,
    body: bytes,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Relay a streamed reply: its head, then each chunk as the replica sends it."""
    requester = ctx.requester
    request_id = envelope.request_id
    envelope.reply_to = requester.reply_subject(request_id)
    parts = requester.expect_stream(request_id)
    hangup: _Hangup | None = None
    started = False
    try:
        seq = await requester.publish(spec.name, envelope, body, spec.replica_digest())
        hangup = _Hangup(scope, receive, lambda: parts.put_nowait(None))  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(envelope.deadline - time.time()):
                while True:
                    msg: NatsMessage | None = await parts.get()
                    if msg is None:  # the caller hung up
                        await requester.cancel(spec.name, request_id, seq)
                        return
                    part = (msg.headers or {}).get(H.PART)
                    if not started:
                        reply = Reply.from_message(msg.headers, msg.data)
                        reply = await resolve(ctx.broker, reply, drop=True)
                        started = True
                        if part is None:  # a whole answer (an error, or Berth's own)
                            await _send_whole(send, reply.status, _reply_headers(reply), reply.body)
                            return
                        start = {"type": "http.response.start", "status": reply.status}
                        await send({**start, "headers": _reply_headers(reply)})
                    elif part == "chunk":
                        await send(
                            {"type": "http.response.body", "body": msg.data, "more_body": True}
                        )
                    elif part == "end":
                        await send({"type": "http.response.body", "body": b""})
                        return
        except TimeoutError:
            if not started:
                raise _no_answer(spec) from None
            log.warning("stream %s cut at its deadline", request_id)
            await requester.cancel(spec.name, request_id, seq)
            await send({"type": "http.response.body", "body": b""})
    except BerthError as exc:
        if not started:
            raise  # answered as JSON by DataPlane
        log.warning("stream %s ended early: %s", request_id, exc.message)  # head sent: just end
        await send({"type": "http.response.body", "body": b""})
    finally:
        if hangup is not None:
            hangup.close()
        requester.forget(request_id)


def _idempotency_key(endpoint: str, token_id: str | None, key: str) -> str:
    """Keys are per endpoint and per caller: another token's same key is another job."""
    raw = f"{endpoint}\0{token_id or '-'}\0{key}".encode()
    return hashlib.sha256(raw).hexdigest()


def _accepted(ctx: AppContext, response_id: str) -> Answer:
    poll_url = f"{ctx.settings.base_url()}/v1/requests/{response_id}"
    payload = orjson.dumps({"response_id": response_id, "poll_url": poll_url})
    headers = [(b"content-type", b"application/json"), (b"location", poll_url.encode())]
    return 202, headers, payload


async def _job(
    ctx: AppContext,
    spec: EndpointSpec,
    envelope: RequestEnvelope,
    body: bytes,
    ask: _Ask,
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
        idem = _idempotency_key(endpoint, token_id, ask.idempotency_key)
        digest = hashlib.sha256(body).hexdigest()
        claim = orjson.dumps({"response_id": request_id, "body_sha256": digest})
        earlier = await claim_idempotency(broker, idem, claim)
        if earlier is not None:
            found = orjson.loads(earlier)
            if found.get("body_sha256") != digest:
                raise _IdempotencyReused(
                    "this Idempotency-Key was used with a different request body"
                )
            return _accepted(ctx, found["response_id"])
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
        await _note_place(ctx, job, revision, seq)
        if ask.deadline is not None:
            ctx.deadlines.schedule(request_id, deadline)
        if result is None:
            return _accepted(ctx, request_id)
        try:
            async with asyncio.timeout(ask.wait):
                reply = await result
        except TimeoutError:
            return _accepted(ctx, request_id)  # still running: poll, as for any job
    # The reply is stored; its job may not say so yet: whoever writes it first, it ends once.
    await finish_with(broker, request_id, reply)
    reply = await resolve(broker, reply, drop=False)
    headers = _reply_headers(reply)
    headers.append((b"x-berth-response-id", request_id.encode()))
    return reply.status, headers, reply.body


async def _note_place(ctx: AppContext, job: JobRecord, revision: int, seq: int) -> None:
    """Keep the job's sequence (to cancel it) and what was queued ahead (for its position)."""
    waiting = await backlog(ctx.broker, job.endpoint)
    ahead = max(0, waiting.queued - 1) if waiting else None  # less this job itself
    span = tracing.current() if tracing.ENABLED else None
    if span is not None and ahead is not None:
        span.set_attribute("berth.queue_position", ahead)
    delivered = waiting.delivered if waiting else None

    def place(current: JobRecord) -> JobRecord:
        return current.model_copy(
            update={"seq": seq, "queued_ahead": ahead, "delivered_mark": delivered}
        )

    # Usually nobody wrote the job since it was made: no read needed.
    await modify(ctx.broker, job.response_id, place, known=(job, revision))


def _error(exc: BerthError) -> Answer:
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


class _IdempotencyReused(BerthError):
    status_code = 422
    code = "idempotency_key_reused"
