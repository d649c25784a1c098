"""The API's HTTP protocol: a response leaves in one write, and nothing is held back.

The protocol is served from a real socket on 127.0.0.1 and spoken to with raw
HTTP/1.1, so what is checked is what a caller receives.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from api.http import HANGUP, ApiHttpProtocol
from api.middleware import new_request_id

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

next_chunk = asyncio.Event()
hung_up = asyncio.Event()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/echo``: the body back; ``/close``: the same, then Connection: close;
    ``/stream``: one chunk, a second once the test has seen the first; ``/hangup``:
    no answer, only the caller's hang-up noted."""
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/hangup":
        scope["extensions"][HANGUP](hung_up.set)
        await hung_up.wait()  # the caller is gone: nobody to answer
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await next_chunk.wait()
        await send({"type": "http.response.body", "body": b"second", "more_body": False})
        return
    headers = [(b"content-length", str(len(body)).encode())]
    if path == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def protocol() -> ApiHttpProtocol:
    config = uvicorn.Config(app, http=ApiHttpProtocol, lifespan="off", log_level="warning")
    return ApiHttpProtocol(config=config, server_state=ServerState(), app_state={})


@pytest.fixture
async def conn() -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    yield reader, writer
    writer.close()
    server.close()
    await server.wait_closed()


def post(path: str, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (
        path.encode(),
        len(body),
        body,
    )


async def response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return head, await reader.readexactly(length)


async def test_kept_alive_requests_get_whole_answers(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    reader, writer = conn
    for i in range(3):
        writer.write(post("/echo", b"hello %d" % i))
        head, body = await response(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == b"hello %d" % i


async def test_a_large_answer_arrives_whole(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Over the size where the head and body are joined, they leave as they lie."""
    reader, writer = conn
    body = bytes(range(256)) * 8192  # 2 MiB
    writer.write(post("/echo", body))
    head, echoed = await response(reader)
    assert head.startswith(b"HTTP/1.1 200 ") and echoed == body


async def test_an_answer_before_a_close_arrives_whole(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    reader, writer = conn
    writer.write(post("/close", b"last words"))
    head, body = await response(reader)
    assert b"connection: close" in head.lower()
    assert body == b"last words"
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # and then the connection closes


async def test_a_streamed_answer_is_not_held_back(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """The first chunk reaches the caller while the app still waits to send the second."""
    reader, writer = conn
    next_chunk.clear()
    writer.write(post("/stream", b""))
    async with asyncio.timeout(5):
        await reader.readuntil(b"\r\n\r\n")
        assert await reader.readuntil(b"\r\n") == b"5\r\n"
        assert await reader.readexactly(7) == b"first\r\n"
    next_chunk.set()
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"0\r\n\r\n") == b"6\r\nsecond\r\n0\r\n\r\n"


async def test_a_hang_up_is_told_to_the_request_it_cut_short(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    _, writer = conn
    hung_up.clear()
    writer.write(post("/hangup", b""))
    await writer.drain()
    writer.close()
    async with asyncio.timeout(5):
        await hung_up.wait()


async def test_a_request_that_stopped_watching_is_not_told() -> None:
    told: list[str] = []
    proto = protocol()
    proto.connection_made(Recording())
    proto.on_message_begin()
    watch = proto.scope["extensions"][HANGUP]  # type: ignore[typeddict-item]
    watch(lambda: told.append("first"))
    watch(None)
    proto.connection_lost(None)
    assert told == []


async def test_a_request_that_watches_after_the_hang_up_is_told_at_once() -> None:
    told: list[str] = []
    proto = protocol()
    proto.connection_made(Recording())
    proto.on_message_begin()
    proto.connection_lost(None)  # while the request was still on its way to the queue
    proto.scope["extensions"][HANGUP](lambda: told.append("gone"))  # type: ignore[typeddict-item]
    assert told == ["gone"]


class Recording(asyncio.Transport):
    """A transport that keeps what it is asked to send, each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.wrote = asyncio.Event()

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.wrote.set()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name in ("sockname", "peername") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_the_head_and_body_leave_in_one_write() -> None:
    transport = Recording()
    proto = protocol()
    proto.connection_made(transport)
    proto.data_received(post("/echo", b"x" * 100))
    async with asyncio.timeout(5):
        await transport.wrote.wait()
    assert proto.cycle.response_complete  # the whole response was in that write
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"x" * 100
    proto.connection_lost(None)


def test_request_ids_are_random_version_4_uuids() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
