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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HANGUP", "ApiHttpProtocol"]

# scope["extensions"][HANGUP](callback): ``callback()`` when the connection is lost
# while the request is served; ``(None)`` stops watching.
HANGUP = "berth.hangup"


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
