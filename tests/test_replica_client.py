"""The agent's HTTP client for the replica hop, against a real server on 127.0.0.1.

The server here is a few lines of asyncio speaking HTTP/1.1, so a test can hold an
answer back, close a kept-alive connection, or watch a connection being closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from workers.http import ReplicaClient


class Server:
    """Answers ``POST /`` with the body it got; ``/hold`` is answered only when released."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = asyncio.Event()  # a connection was closed by the client
        self.release = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                if head.startswith(b"POST /interim "):  # 1xx answers before the real one
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n")
                elif head.startswith(b"POST /switch "):
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n")
                    await writer.drain()
                    continue
                if head.startswith(b"POST /hold "):  # answered when released, or never
                    hangup = asyncio.ensure_future(reader.read(1))
                    released = asyncio.ensure_future(self.release.wait())
                    await asyncio.wait([hangup, released], return_when=asyncio.FIRST_COMPLETED)
                    released.cancel()
                    if hangup.done():
                        self.closed.set()  # the client closed the connection it waited on
                        return
                    hangup.cancel()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, ReplicaClient]]:
    srv = Server()
    port = await srv.start()
    client = ReplicaClient("127.0.0.1", port)
    yield srv, client
    client.close()
    await srv.stop()


async def test_requests_reuse_one_kept_alive_connection(
    server: tuple[Server, ReplicaClient],
) -> None:
    srv, client = server
    for i in range(3):
        resp = await client.request("POST", "/", [], b"body %d" % i, 5)
        assert (resp.status, resp.body) == (200, b"body %d" % i)
    assert srv.connections == 1


async def test_a_connection_the_replica_closed_is_replaced(
    server: tuple[Server, ReplicaClient],
) -> None:
    srv, client = server
    await client.request("POST", "/", [], b"one", 5)
    for writer in srv.writers:  # the replica drops its idle keep-alive connection
        writer.close()
    resp = await client.request("POST", "/", [], b"two", 5)
    assert resp.body == b"two"
    assert srv.connections == 2


async def test_a_timeout_closes_the_connection_it_waited_on(
    server: tuple[Server, ReplicaClient],
) -> None:
    srv, client = server
    await client.request("POST", "/", [], b"warm", 5)  # the next request finds it idle
    with pytest.raises(TimeoutError):
        await client.request("POST", "/hold", [], b"slow", 0.05)
    # Its answer may still come: the connection must not be used again, so it is closed.
    async with asyncio.timeout(5):
        await srv.closed.wait()
    srv.release.set()
    resp = await client.request("POST", "/", [], b"after", 5)
    assert resp.body == b"after"
    assert srv.connections == 2


async def test_a_cancelled_request_closes_its_connection(
    server: tuple[Server, ReplicaClient],
) -> None:
    """The agent cancels a request whose caller gave up; the replica sees the hang-up."""
    srv, client = server
    await client.request("POST", "/", [], b"warm", 5)
    task = asyncio.create_task(client.request("POST", "/hold", [], b"slow", 30))
    await asyncio.sleep(0)  # the request is on its way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        await srv.closed.wait()


async def test_interim_answers_are_skipped_for_the_final_one(
    server: tuple[Server, ReplicaClient],
) -> None:
    """1xx answers are interim (RFC 9110): never taken as the replica's answer."""
    srv, client = server
    for _ in range(2):  # and the kept-alive connection is still in step afterwards
        resp = await client.request("POST", "/interim", [], b"real", 5)
        assert (resp.status, resp.body) == (200, b"real")
        assert ("link", "</a>; rel=preload") not in resp.headers
    resp = await client.request("POST", "/", [], b"next", 5)
    assert (resp.status, resp.body) == (200, b"next")
    assert srv.connections == 1


async def test_switching_protocols_is_not_an_answer(
    server: tuple[Server, ReplicaClient],
) -> None:
    _, client = server
    with pytest.raises(ConnectionError, match="101"):
        await client.request("POST", "/switch", [], b"x", 5)
