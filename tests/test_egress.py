"""Caller-given URLs never reach the host's own network (shared/egress.py), and a stack
with private callbacks off refuses them at submission and at delivery."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import httpcore
import httpx
import pytest

from api.callbacks import check_callback_url
from shared.egress import (
    BlockedAddress,
    GuardedBackend,
    blocked_reason,
    guarded_client,
    literal_address,
)
from shared.errors import InvalidRequest
from tests.conftest import FAST, Stack, wait_for

SPELLINGS = [
    ("127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("[::1]", "::1"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ("169.254.169.254", "169.254.169.254"),
    ("example.com", None),
    ("deadbeef", None),  # a name that happens to be hex, not an address
]


@pytest.mark.parametrize(("host", "address"), SPELLINGS)
def test_literal_addresses_in_every_spelling(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found else None) == address


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("127.0.0.1", True),
        ("0.0.0.0", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("169.254.169.254", True),  # the metadata service
        ("224.0.0.1", True),
        ("240.0.0.1", True),
        ("255.255.255.255", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("ff02::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped
        ("::ffff:10.0.0.1", True),
        ("2002:7f00:1::", True),  # 6to4 around 127.0.0.1
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 around 169.254.169.254
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:8.8.8.8", False),
    ],
)
def test_which_addresses_are_blocked(address: str, blocked: bool) -> None:
    assert (blocked_reason(ipaddress.ip_address(address)) is not None) is blocked


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://127.1/x",
        "http://2130706433/x",
        "http://0x7f000001/x",
        "http://0/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/x",
        "http://LOCALHOST./x",
        "http://a.localhost/x",
        "http://10.0.0.1/x",
    ],
)
def test_submission_refuses_private_spellings(url: str) -> None:
    with pytest.raises(InvalidRequest):
        check_callback_url(url, allow_private=False)
    assert check_callback_url(url, allow_private=True) == url


async def test_a_name_is_resolved_once_and_the_checked_address_is_connected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the first lookup says public, any later one says loopback. The
    backend looks up once and connects to the address it checked."""
    lookups: list[str] = []
    connected: list[str] = []

    async def rebinding(self: Any, host: str, port: int, **kw: Any) -> list[Any]:
        lookups.append(host)
        address = "93.184.216.34" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    async def record(self: Any, host: str, port: int, *a: Any, **kw: Any) -> Any:
        connected.append(host)
        raise httpcore.ConnectError("not connecting anywhere in a test")

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", rebinding)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", record)
    backend = GuardedBackend()
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("rebind.example", 80)
    assert lookups == ["rebind.example"] and connected == ["93.184.216.34"]
    with pytest.raises(BlockedAddress):  # the second lookup's loopback answer is refused
        await backend.connect_tcp("rebind.example", 80)
    assert connected == ["93.184.216.34"]


async def test_guarded_client_never_connects_to_loopback() -> None:
    hits = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        hits += 1
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        name = socket.gethostname()
        async with guarded_client(allow_private=False, timeout=5) as client:
            for url in (
                f"http://127.0.0.1:{port}/",
                f"http://127.1:{port}/",
                f"http://{name}:{port}/",
            ):
                with pytest.raises(httpx.ConnectError):
                    await client.post(url, content=b"{}")
        assert hits == 0
        async with guarded_client(allow_private=True, timeout=5) as client:
            assert (await client.post(f"http://127.0.0.1:{port}/")).status_code == 204
        assert hits == 1
    finally:
        server.close()


def _resolves_privately(name: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return all(blocked_reason(ipaddress.ip_address(i[4][0])) for i in infos)


@pytest.mark.e2e
def test_a_stack_with_private_callbacks_off(own_nats: Any, tmp_path: Any, name: str) -> None:
    """Submission refuses literal spellings (422); a name that resolves to the host is
    refused at delivery without a connection, and the log tells nothing of the target."""
    hits: list[bytes] = []
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.settimeout(0.1)
    port = lsock.getsockname()[1]
    stack = Stack(
        tmp_path / "berth", own_nats.url, env={**FAST, "BERTH_CALLBACK_ALLOW_PRIVATE": "false"}
    )
    try:
        stack.start()
        stack.deploy(name, max_replicas=1)
        with stack.client() as c:
            for host in ("127.0.0.1", "2130706433", "0", "[::1]", "localhost", "169.254.169.254"):
                resp = c.post(
                    f"/e/{name}/infer",
                    json={"prompt": "x"},
                    headers={"X-Berth-Callback-URL": f"http://{host}:{port}/cb"},
                )
                assert resp.status_code == 422, (host, resp.text)
            host = socket.gethostname()
            if not _resolves_privately(host):
                pytest.skip(f"{host!r} does not resolve to a private address here")
            resp = c.post(
                f"/e/{name}/infer",
                json={"prompt": "x"},
                headers={"X-Berth-Callback-URL": f"http://{host}:{port}/cb"},
            )
            assert resp.status_code == 202, resp.text
            poll_url = resp.json()["poll_url"]

            def given_up() -> dict[str, Any] | None:
                cb = c.get(poll_url).json().get("callback") or {}
                return cb if cb.get("state") == "failed" else None

            cb = wait_for(given_up, 30, "the callback to be refused")
            assert cb["attempts"] == 1 and cb["log"][0]["status"] is None
            assert cb["log"][0]["error"].startswith("refused:")
        try:
            conn, _ = lsock.accept()
            hits.append(conn.recv(100))
        except TimeoutError:
            pass
        assert hits == []
    finally:
        stack.close()
        lsock.close()
