"""The sync and streamed modes: wait for a replica's answer (or its parts) on this
instance's inbox; a caller that hangs up cancels the request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.types import Message, Receive, Scope, Send

from api.context import AppContext
from api.dataplane.asks import (
    Disconnected,
    reply_headers,
    send_whole,
)
from api.http import HANGUP, Answer
from broker.bodies import resolve
from broker.envelope import RequestEnvelope, StreamPart
from shared.errors import (
    BerthError,
    UpstreamTimeout,
)
from shared.messages import EndpointSpec
from shared.waiting import wait_by

log = logging.getLogger(__name__)


def no_answer(spec: EndpointSpec) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"endpoint {spec.name!r} gave no answer in time ({spec.request_timeout:g} s "
        "or the request's deadline)"
    )


class Hangup:
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


async def answer_sync(
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
            waiter.set_exception(Disconnected())

    try:
        seq = await requester.publish(spec.name, envelope, body, spec.replica_digest())
        hangup = Hangup(scope, receive, hung_up)
        try:
            left = envelope.deadline - time.time()
            reply = await wait_by(waiter, asyncio.get_running_loop().time() + left)
        except TimeoutError:
            await requester.cancel(spec.name, request_id, seq)  # nobody waits for it now
            raise no_answer(spec) from None
        except Disconnected:
            # Out of the queue if it is still there; stopped if a replica has it.
            await requester.cancel(spec.name, request_id, seq)
            raise
        finally:
            hangup.close()
    finally:
        requester.forget(request_id)
    reply = await resolve(ctx.broker, reply, drop=True)
    return reply.status, reply_headers(reply), reply.body


async def answer_stream(
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
    hangup: Hangup | None = None
    started = False
    try:
        seq = await requester.publish(spec.name, envelope, body, spec.replica_digest())
        hangup = Hangup(scope, receive, lambda: parts.put_nowait(None))  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(envelope.deadline - time.time()):
                while True:
                    msg: StreamPart | None = await parts.get()
                    if msg is None:  # the caller hung up
                        await requester.cancel(spec.name, request_id, seq)
                        return
                    part = msg.kind
                    if not started:
                        reply = msg.reply()
                        reply = await resolve(ctx.broker, reply, drop=True)
                        started = True
                        if part is None:  # a whole answer (an error, or Berth's own)
                            await send_whole(send, reply.status, reply_headers(reply), reply.body)
                            return
                        start = {"type": "http.response.start", "status": reply.status}
                        await send({**start, "headers": reply_headers(reply)})
                    elif part == "chunk":
                        await send(
                            {"type": "http.response.body", "body": msg.data, "more_body": True}
                        )
                    elif part == "end":
                        await send({"type": "http.response.body", "body": b""})
                        return
        except TimeoutError:
            if not started:
                raise no_answer(spec) from None
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
