"""A lean HTTP/1.1 client for the agent → replica hop: keep-alive connections, httptools parsing.

The replica is on the same host, answers one request per connection at a time,
and speaks plain HTTP/1.1; a general client (redirects, auth flows, cookies,
async-library detection on every call) costs more than the hop itself. The
profile that motivated this is in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httptools

from shared.waiting import wait_by
from workers.service import REPLICA_KEY_HEADER

__all__ = ["ReplicaClient", "Response"]

Headers = list[tuple[str, str]]


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._head = False
        self._status = 0
        self._headers: Headers = []
        self._chunks: list[bytes] = []
        # An interim (1xx) answer is being parsed: it is skipped, never taken as the answer.
        self._interim = False
        self.got_bytes = False
        self.keep_alive = True
        # Streaming: body chunks go here as they come (None ends, an exception fails).
        self.sink: asyncio.Queue[bytes | Exception | None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed response from replica: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"replica closed the connection{f': {exc}' if exc else ''}"))

    # -- httptools callbacks -----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if 100 <= self._status < 200:
            # RFC 9110 §15.2: 1xx answers are interim; the final one follows on the same
            # connection. 101 would hand the connection to another protocol: refused.
            if self._status == 101:
                self._fail(ConnectionError("the replica switched protocols (101), not an answer"))
                return
            self._interim = True
            self._headers = []
            return
        self.keep_alive = self._parser.should_keep_alive()
        if self._head:  # no body follows, whatever content-length says
            self.keep_alive = False
            self._finish()
        elif self.sink is not None:
            self._finish()  # the head now; the body follows through the sink

    def on_body(self, body: bytes) -> None:
        if self._interim:
            return
        if self.sink is not None:
            self.sink.put_nowait(body)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.sink is not None:
            self.sink.put_nowait(None)
        else:
            self._finish()

    # -----------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Response(self._status, self._headers, b"".join(self._chunks)))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        elif self.sink is not None:
            self.sink.put_nowait(exc)

    def send(self, head: bytes, body: bytes, is_head: bool) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._head = is_head
        self._status, self._headers, self._chunks = 0, [], []
        self._interim = False
        self.got_bytes = False
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ReplicaClient:
    """Keep-alive connections to one replica (``host:port``)."""

    def __init__(self, host: str, port: int, *, max_idle: int = 4, key: str | None = None):
        self.host = host
        self.port = port
        # The host line, and the replica's key (REPLICA_KEY_HEADER) right after it: the
        # replica reads the first one it finds, so a caller's own copy never counts.
        self._host_header = f"{host}:{port}".encode() + (
            f"\r\n{REPLICA_KEY_HEADER}: {key}".encode() if key else b""
        )
        self._idle: list[_Connection] = []
        self._max_idle = max_idle

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        return conn

    def _head(self, method: str, target: str, headers: Headers, length: int) -> bytes:
        lines = [f"{method} {target} HTTP/1.1".encode(), b"host: " + self._host_header]
        lines.extend(f"{k}: {v}".encode("latin-1") for k, v in headers)
        if length or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(b"content-length: " + str(length).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def request(
        self, method: str, target: str, headers: Headers, body: bytes, timeout: float
    ) -> Response:
        """Send one request; ConnectionError if the replica is unreachable, TimeoutError after ``timeout``."""
        head = self._head(method, target, headers, len(body))
        deadline = asyncio.get_running_loop().time() + timeout
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            try:
                answer = await wait_by(conn.send(head, body, method == "HEAD"), deadline)
            except ConnectionError:
                conn.close()
                if conn.got_bytes:  # the replica failed mid-answer: not a stale connection
                    raise
                continue  # a kept-alive connection the replica had closed: try another
            except BaseException:  # timed out or cancelled mid-request: never reused
                conn.close()
                raise
            return self._release(conn, answer)
        async with asyncio.timeout_at(deadline):
            try:
                conn = await self._connect()
            except OSError as exc:
                raise ConnectionError(
                    f"cannot connect to replica at {self.host}:{self.port}: {exc}"
                ) from exc
            try:
                return self._release(conn, await conn.send(head, body, method == "HEAD"))
            except BaseException:
                conn.close()
                raise

    def _release(self, conn: _Connection, response: Response) -> Response:
        if conn.keep_alive and not conn.closed and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def stream(
        self, method: str, target: str, headers: Headers, body: bytes, timeout: float
    ) -> tuple[Response, AsyncIterator[bytes]]:
        """Send one request on a fresh connection; the head at once, the body as it comes.

        ``timeout`` bounds the wait for the head; the caller bounds the rest. The
        connection closes when the body ends or the iterator is dropped.
        """
        head = self._head(method, target, headers, len(body))
        try:
            conn = await asyncio.wait_for(self._connect(), timeout)
        except OSError as exc:
            raise ConnectionError(
                f"cannot connect to replica at {self.host}:{self.port}: {exc}"
            ) from exc
        sink: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        conn.sink = sink
        try:
            async with asyncio.timeout(timeout):
                response = await conn.send(head, body, method == "HEAD")
        except BaseException:
            conn.close()
            raise

        async def chunks() -> AsyncIterator[bytes]:
            try:
                if method == "HEAD":
                    return
                while (item := await sink.get()) is not None:
                    if isinstance(item, Exception):
                        raise item
                    yield item
            finally:
                conn.close()

        return response, chunks()

    def close(self) -> None:
        for conn in self._idle:
            with contextlib.suppress(Exception):
                conn.close()
        self._idle.clear()
