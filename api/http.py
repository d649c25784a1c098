"""uvicorn's HTTP protocol, with a response's writes gathered into one send per turn,
and a hook that tells the data plane at once when a caller hangs up.

uvicorn writes a response's head when the app sends ``http.response.start`` and its
body when it sends ``http.response.body``: two ``send`` syscalls, and two segments
for the caller, who may wake for the head only to wait again for the body. Both
happen in one turn of the loop when the body is ready (as it is for every answer
the data plane gives), so the transport below holds what is written and sends it
in one write when the response is complete, or at the end of the turn, whichever
comes first. A streamed response still leaves chunk by chunk: each is written in
its own turn.

A caller waiting for its answer may hang up; the data plane then takes the request
out of the queue. ASGI tells of a hang-up through ``receive()``, which costs a task
per request to wait on it; this protocol offers, in the scope's extensions, a way
to register a plain callback for the connection's loss instead.

The data plane's requests (``/e/...``) skip the ASGI chain when the app offers a
direct entry (``BerthApp.direct``): uvicorn still parses the request, keeps the
connection (keep-alive, pipelining, flow control, ``Expect: 100-continue``) and
collects the body; the data plane's whole answer is then written here in one
piece, without the middleware's wrapped ``send``, two ASGI messages, and uvicorn's
checks of headers that Berth built itself. A streamed answer still goes through
uvicorn's ``send``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from api.middleware import with_request_id

__all__ = ["HANGUP", "UVICORN_VERIFIED", "Answer", "ApiHttpProtocol", "Direct", "check_uvicorn"]

log = logging.getLogger(__name__)

# A whole answer: status, headers (lower-case names), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
# The data plane's own entry: its whole answer, or None when it streamed the answer
# through ``send`` itself.
Direct = Callable[[Scope, Receive, Send], Awaitable[Answer | None]]

# scope["extensions"][HANGUP](callback): ``callback()`` when the connection is lost
# while the request is served; ``(None)`` stops watching.
HANGUP = "berth.hangup"


# The protocol below extends uvicorn's httptools protocol through names uvicorn keeps
# private. It is verified on these releases (pyproject.toml pins the same range), and
# check_uvicorn() refuses to start on one whose private names changed.
UVICORN_VERIFIED = ((0, 30), (0, 55))  # from, up to (not included)
_PROTOCOL_NAMES = (
    "_start_asgi_task",
    "connection_made",
    "connection_lost",
    "on_message_begin",
    "on_response_complete",
)
_PROTOCOL_STATE = ("app", "loop", "tasks", "transport", "scope", "cycle")
_CYCLE_NAMES = ("send", "receive", "send_500_response")
_CYCLE_STATE = (
    "scope",
    "transport",
    "flow",
    "default_headers",
    "message_event",
    "on_response",
    "disconnected",
    "keep_alive",
    "response_started",
    "response_complete",
)


def check_uvicorn() -> None:
    """Raise RuntimeError, naming what is missing, if the installed uvicorn lacks a private
    name this module relies on (a release outside UVICORN_VERIFIED that changed them)."""
    import inspect

    import uvicorn

    missing = [
        f"HttpToolsProtocol.{n}" for n in _PROTOCOL_NAMES if not hasattr(HttpToolsProtocol, n)
    ]
    missing += [
        f"RequestResponseCycle.{n}" for n in _CYCLE_NAMES if not hasattr(RequestResponseCycle, n)
    ]
    for cls, names in ((HttpToolsProtocol, _PROTOCOL_STATE), (RequestResponseCycle, _CYCLE_STATE)):
        init = inspect.getsource(cls.__init__)
        missing += [
            f"{cls.__name__}.{n}"
            for n in names
            if f"self.{n} " not in init and f"self.{n}:" not in init
        ]
    start = getattr(HttpToolsProtocol, "_start_asgi_task", None)
    params = list(inspect.signature(start).parameters) if start is not None else []
    if start is not None and params[1:] != ["cycle", "app"]:
        missing.append(f"HttpToolsProtocol._start_asgi_task(cycle, app), found {params[1:]}")
    if missing:
        low, high = (".".join(map(str, v)) for v in UVICORN_VERIFIED)
        raise RuntimeError(
            f"uvicorn {uvicorn.__version__} is not one Berth's HTTP protocol works with "
            f"(verified on >={low},<{high}); it lacks: {', '.join(missing)}"
        )


# Held writes up to this size in all are joined into one; larger ones (a big body)
# leave through one writev, uncopied.
JOIN_LIMIT = 64 * 1024


class _GatheringTransport:
    """A transport whose writes leave together at the end of the loop's turn.

    Everything but writing, closing and the buffer's size goes to the real transport.
    """

    __slots__ = ("_held", "_held_size", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))
        self._held_size += len(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        held = self._held
        if not held:
            return
        size, self._held, self._held_size = self._held_size, [], 0
        if self._transport.is_closing():
            return  # the peer went away meanwhile: nothing to send it
        if len(held) == 1:
            self._transport.write(held[0])
        elif size <= JOIN_LIMIT:
            self._transport.write(b"".join(held))
        else:
            self._transport.writelines(held)

    def close(self) -> None:
        self.flush()  # what was written before the close still goes out
        self._transport.close()

    def abort(self) -> None:
        self._held, self._held_size = [], 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ApiHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`_GatheringTransport`, with the hang-up hook.

    One request on a connection is served at a time (pipelined ones wait their
    turn), so one callback per connection is enough.
    """

    _on_hangup: Callable[[], None] | None = None
    _lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gathering = _GatheringTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(gathering)  # type: ignore[arg-type]
        self._direct: Direct | None = getattr(self.app, "direct", None)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        direct = self._direct
        # Not the app (the server is over its concurrency limit): uvicorn's 503.
        if direct is None or app is not self.app or not cycle.scope["path"].startswith("/e/"):
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(serve_direct(cycle, direct))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_response_complete(self) -> None:
        # The whole response is written: it leaves now, not at the end of the turn.
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {HANGUP: self._watch}  # type: ignore[dict-item]

    def _watch(self, callback: Callable[[], None] | None) -> None:
        if callback is not None and self._lost:
            callback()  # the caller left before anyone watched
            return
        self._on_hangup = callback

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        callback, self._on_hangup = self._on_hangup, None
        super().connection_lost(exc)
        if callback is not None:
            callback()


# What a header may not hold (RFC 9110): a name is a token; a value has no control
# characters but tab. A replica's headers pass through, so they are checked.
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-zA-Z]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def _bad_header_answer() -> Answer:
    error = {
        "error": {
            "code": "bad_gateway",
            "message": "the replica's answer has a header HTTP does not allow",
        }
    }
    return 502, [(b"content-type", b"application/json")], orjson.dumps(error)


async def serve_direct(cycle: RequestResponseCycle, direct: Direct) -> None:
    """One data-plane request on uvicorn's cycle, without the ASGI chain (see the module)."""
    id_header, send = with_request_id(cycle.scope, cycle.send)  # type: ignore[arg-type]
    try:
        answer = await direct(cycle.scope, cycle.receive, send)  # type: ignore[arg-type]
        if answer is not None:
            await _write_whole(cycle, *answer, id_header)
        elif not cycle.response_complete and not cycle.disconnected:
            log.error("the data plane returned without completing its streamed answer")
            cycle.transport.close()
    except BaseException as exc:
        log.error("the data plane failed", exc_info=exc)
        if not cycle.response_started:
            await cycle.send_500_response()
        else:
            cycle.transport.close()
    finally:
        cycle.on_response = lambda: None


async def _write_whole(
    cycle: RequestResponseCycle,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    id_header: tuple[bytes, bytes],
) -> None:
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    for name, value in headers:
        if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
            log.warning("an answer's header is not valid HTTP: %r", name)
            status, headers, body = _bad_header_answer()
            break
    head = [_STATUS_LINES[status]]
    for name, value in (*cycle.default_headers, *headers, id_header):
        head += (name, b": ", value, b"\r\n")
    if cycle.scope["method"] == "HEAD":
        body = b""  # no body, and no length claimed: the replica's own is not passed on
    else:
        head += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    if not cycle.keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    cycle.transport.write(b"".join(head))
    if body:
        cycle.transport.write(body)
    cycle.response_started = cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
