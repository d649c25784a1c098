"""The API's HTTP protocol: a response leaves in one write, and nothing is held back.

The protocol is served from a real socket on 127.0.0.1 and spoken to with raw
HTTP/1.1, so what is checked is what a caller receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from api.http import HANGUP, ApiHttpProtocol
from api.main import server_config
from api.middleware import new_request_id
from shared.settings import ApiSettings

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

next_chunk = asyncio.Event()
hung_up = asyncio.Event()


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/echo``: the body back; ``/close``: the same, then Connection: close;
    ``/stream``: one chunk, a second once the test has seen the first; ``/hangup``:
    no answer, only the caller's hang-up noted."""
    assert scope["type"] == "http"
    body = await read_body(receive)
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


def protocol(served: Any = app) -> ApiHttpProtocol:
    config = uvicorn.Config(
        served, http=ApiHttpProtocol, lifespan="off", log_level="warning", proxy_headers=False
    )
    config.load()
    return ApiHttpProtocol(config=config, server_state=ServerState(), app_state={})


@pytest.fixture
async def conn() -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    async with connected(protocol) as pair:
        yield pair


@contextlib.asynccontextmanager
async def connected(
    factory: Callable[[], ApiHttpProtocol],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
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


class WithDirect:
    """An app that offers the data plane's direct entry, as BerthApp does: ``/e/...``
    is answered by ``direct``; anything else by the ASGI app above."""

    def __init__(self) -> None:
        self.asgi_calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.asgi_calls += 1
        await app(scope, receive, send)

    async def direct(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        body = await read_body(receive)
        path = scope["path"]
        if path == "/e/fails":
            raise RuntimeError("a bug")
        if path == "/e/bad-header":
            return 200, [(b"x-evil", b"one\x00two")], body
        if path == "/e/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return None
        rid = scope["state"]["request_id"].encode()
        return 201, [(b"content-type", b"text/plain"), (b"x-seen-id", rid)], body


@pytest.fixture
async def direct_app() -> AsyncIterator[
    tuple[WithDirect, asyncio.StreamReader, asyncio.StreamWriter]
]:
    served = WithDirect()
    async with connected(lambda: protocol(served)) as (reader, writer):
        yield served, reader, writer


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def test_the_data_plane_answers_without_the_asgi_chain(
    direct_app: tuple[WithDirect, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Its whole answer in one response, with a request id it saw too; kept alive."""
    served, reader, writer = direct_app
    for i in range(3):
        writer.write(post("/e/echo/infer", b"hello %d" % i))
        head, body = await response(reader)
        assert head.startswith(b"HTTP/1.1 201 Created\r\n")
        assert body == b"hello %d" % i
        assert header(head, b"content-type") == b"text/plain"
        rid = header(head, b"x-user-request-id")
        assert rid is not None and header(head, b"x-seen-id") == rid
        assert uuid.UUID(rid.decode()).version == 4
    writer.write(post("/other", b"asgi"))  # anything else: the ASGI app
    head, body = await response(reader)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"asgi"
    assert served.asgi_calls == 1


async def test_pipelined_data_plane_requests_are_answered_in_order(
    direct_app: tuple[WithDirect, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    _, reader, writer = direct_app
    writer.write(b"".join(post("/e/echo/infer", b"n%d" % i) for i in range(4)))
    for i in range(4):
        _, body = await response(reader)
        assert body == b"n%d" % i


async def test_a_header_http_does_not_allow_becomes_a_502(
    direct_app: tuple[WithDirect, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    _, reader, writer = direct_app
    writer.write(post("/e/bad-header", b"x"))
    head, body = await response(reader)
    assert head.startswith(b"HTTP/1.1 502 ")
    assert b"x-evil" not in head
    assert b"header" in body


async def test_a_failing_data_plane_gives_a_500_and_the_connection_goes_on(
    direct_app: tuple[WithDirect, asyncio.StreamReader, asyncio.StreamWriter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, reader, writer = direct_app
    writer.write(post("/e/fails", b""))
    head, _ = await response(reader)
    assert head.startswith(b"HTTP/1.1 500 ")
    assert "the data plane failed" in caplog.text


async def test_a_head_request_gets_no_body(
    direct_app: tuple[WithDirect, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    _, reader, writer = direct_app
    writer.write(b"HEAD /e/echo/infer HTTP/1.1\r\nhost: t\r\n\r\n")
    writer.write(post("/e/echo/infer", b"after"))
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 ") and header(head, b"content-length") is None
    _, body = await response(reader)  # the next answer follows at once: no body was sent
    assert body == b"after"


async def test_a_streamed_data_plane_answer_goes_through_send_with_its_id(
    direct_app: tuple[WithDirect, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    _, reader, writer = direct_app
    writer.write(post("/e/stream", b""))
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        assert header(head, b"x-user-request-id") is not None
        assert await reader.readuntil(b"0\r\n\r\n") == b"4\r\npart\r\n0\r\n\r\n"


async def test_connection_close_is_kept_on_the_direct_path(
    direct_app: tuple[WithDirect, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    _, reader, writer = direct_app
    request = b"POST /e/x HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye"
    writer.write(request)
    head, body = await response(reader)
    assert header(head, b"connection") == b"close" and body == b"bye"
    async with asyncio.timeout(5):
        assert await reader.read() == b""


def test_the_api_server_finds_the_data_planes_direct_entry(tmp_path: Path) -> None:
    """As served (api/main.py), the app is unwrapped: the protocol finds ``direct`` on it;
    with host routing, which may rewrite a path, it finds none."""
    config = server_config(ApiSettings(admin_token=None, data_dir=tmp_path))
    config.load()
    assert getattr(config.loaded_app, "direct", None) is not None
    routed = server_config(
        ApiSettings(admin_token=None, data_dir=tmp_path, endpoint_domain="berth.test")
    )
    routed.load()
    assert getattr(routed.loaded_app, "direct", "missing") is None


def test_the_installed_uvicorn_is_one_the_protocol_was_verified_on() -> None:
    import uvicorn

    from api.http import UVICORN_VERIFIED, check_uvicorn

    version = tuple(int(p) for p in uvicorn.__version__.split(".")[:2])
    low, high = UVICORN_VERIFIED
    assert low <= version < high, uvicorn.__version__
    check_uvicorn()


def test_an_uvicorn_without_the_names_the_protocol_uses_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from api.http import check_uvicorn

    monkeypatch.delattr(HttpToolsProtocol, "_start_asgi_task")
    with pytest.raises(RuntimeError, match=r"HttpToolsProtocol\._start_asgi_task"):
        check_uvicorn()
