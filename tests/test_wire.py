"""The data path's lean NATS connection (broker/wire.py) against real nats-servers."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import broker.wire
from berth.local import LocalNats
from broker.wire import Message, Wire, parse_headers
from shared.errors import BrokerUnavailable
from tests.conftest import NatsServer, free_port


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class Inbox:
    """What a subscription received, and a way to wait for it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, msg: Message) -> None:
        self.messages.append(msg)

    async def wait(self, count: int, timeout: float = 10.0) -> list[Message]:
        await until(lambda: len(self.messages) >= count, timeout)
        return self.messages


@pytest.fixture
async def wire(nats_server: NatsServer) -> AsyncIterator[Wire]:
    w = await Wire.connect(nats_server.url, "test")
    yield w
    await w.close()


async def test_messages_arrive_with_their_subject_reply_headers_and_payload(wire: Wire) -> None:
    inbox = Inbox()
    wire.subscribe("wire.t1.*", inbox)
    wire.publish("wire.t1.a", b"plain")
    wire.publish("wire.t1.b", b"with headers", reply="wire.back", headers={"K": "v: with colon"})
    wire.publish("wire.t1.c", b"", headers={"Only": "headers"})
    wire.publish("elsewhere", b"not ours")
    a, b, c = await inbox.wait(3)
    assert (a.subject, a.reply, a.data, a.headers) == ("wire.t1.a", "", b"plain", None)
    assert (b.subject, b.reply, b.data) == ("wire.t1.b", "wire.back", b"with headers")
    assert b.headers == {"K": "v: with colon"}
    assert (c.data, c.headers) == (b"", {"Only": "headers"})


async def test_payloads_split_over_many_reads_and_many_in_one_read_arrive_whole(
    wire: Wire,
) -> None:
    inbox = Inbox()
    wire.subscribe("wire.t2", inbox)
    big = bytes(range(256)) * 12_000  # 3 MB: many reads of the socket
    small = [b"%d" % i for i in range(500)]  # many to a read
    wire.publish("wire.t2", big, headers={"Size": str(len(big))})
    for payload in small:
        wire.publish("wire.t2", payload)
    wire.publish("wire.t2", big[:300_000])  # large, and no headers
    got = await inbox.wait(502)
    assert got[0].data == big and got[0].headers == {"Size": str(len(big))}
    assert [m.data for m in got[1:501]] == small
    assert got[501].data == big[:300_000] and got[501].headers is None


async def test_an_unsubscribed_subject_gets_nothing_more(wire: Wire) -> None:
    first, second = Inbox(), Inbox()
    sid = wire.subscribe("wire.t3", first)
    wire.subscribe("wire.t3", second)
    wire.publish("wire.t3", b"1")
    await first.wait(1)
    wire.unsubscribe(sid)
    wire.publish("wire.t3", b"2")
    await second.wait(2)  # both went out, in order, so the first saw its last already
    assert [m.data for m in first.messages] == [b"1"]


async def test_a_request_to_no_one_gets_nats_no_responders_status(wire: Wire) -> None:
    inbox = Inbox()
    wire.subscribe("wire.t4.reply", inbox)
    wire.publish("wire.t4.nobody", b"?", reply="wire.t4.reply")
    (msg,) = await inbox.wait(1)
    assert msg.data == b"" and msg.headers is not None and msg.headers["Status"] == "503"


async def test_requests_get_their_own_answers_or_a_clear_failure(wire: Wire) -> None:
    def echo(msg: Message) -> None:
        wire.publish(msg.reply, b"re: " + msg.data)

    wire.subscribe("wire.t5.echo", echo)
    wire.subscribe("wire.t5.silent", lambda msg: None)
    answers = await asyncio.gather(*(wire.request("wire.t5.echo", b"%d" % i) for i in range(20)))
    assert [a.data for a in answers] == [b"re: %d" % i for i in range(20)]
    with pytest.raises(BrokerUnavailable, match="nobody answers"):
        await wire.request("wire.t5.nobody")
    with pytest.raises(BrokerUnavailable, match="in time"):
        await wire.request("wire.t5.silent", timeout=0.1)


def test_status_lines_parse_as_nats_py_has_them() -> None:
    assert parse_headers(b"NATS/1.0 408 Request Timeout\r\n\r\n") == {
        "Status": "408",
        "Description": "Request Timeout",
    }
    assert parse_headers(b"NATS/1.0 503\r\n\r\n") == {"Status": "503"}
    assert parse_headers(b"NATS/1.0\r\nA: 1\r\nB:2\r\n\r\n") == {"A": "1", "B": "2"}


def test_header_values_keep_their_utf8_and_all_but_ascii_spaces() -> None:
    raw = "NATS/1.0\r\nName: \u00a0caf\u00e9 \t\r\nBad: \xff\r\n\r\n".encode()
    raw = raw.replace("\xff".encode(), b"\xff")  # a byte that is not UTF-8
    assert parse_headers(raw) == {"Name": "\u00a0caf\u00e9", "Bad": "\ufffd"}


async def test_bad_publishes_are_refused_before_they_reach_the_server(wire: Wire) -> None:
    with pytest.raises(ValueError, match="line break"):
        wire.publish("wire.t5", b"", headers={"Evil": "a\r\nInjected: 1"})
    with pytest.raises(BrokerUnavailable, match="max_payload"):
        wire.publish("wire.t5", b"x" * (wire.max_payload + 1))
    await wire.close()
    with pytest.raises(BrokerUnavailable, match="closed"):
        wire.publish("wire.t5", b"late")
    with pytest.raises(BrokerUnavailable, match="nats:// and tls:// only"):
        await Wire.connect("ws://127.0.0.1:80", "test")


async def test_it_reconnects_resubscribes_and_sends_what_was_published_meanwhile(
    own_nats: NatsServer,
) -> None:
    wire = await Wire.connect(own_nats.url, "test")
    try:
        inbox = Inbox()
        wire.subscribe("wire.t6", inbox)
        wire.publish("wire.t6", b"before")
        await inbox.wait(1)

        assert own_nats.proc is not None
        own_nats.proc.kill()
        own_nats.proc.wait(10)
        await until(lambda: not wire.is_connected)
        wire.publish("wire.t6", b"while down")  # held, not lost
        wire.subscribe("wire.t6", inbox)  # a second subscription, made while down
        own_nats.start()

        got = await inbox.wait(3, timeout=20)
        assert sorted(m.data for m in got) == [b"before", b"while down", b"while down"]
    finally:
        await wire.close()


async def test_it_gives_up_on_a_server_that_stops_answering_pings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A silent server is taken for dead: the wire drops it and connects again."""
    monkeypatch.setattr(broker.wire, "PING_INTERVAL", 0.05)
    connections: list[asyncio.StreamWriter] = []
    hung_up: list[asyncio.StreamWriter] = []

    async def mute_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        writer.write(b'INFO {"max_payload":1048576}\r\n')
        await reader.readuntil(b"PING\r\n")  # CONNECT, then the first PING: answered
        writer.write(b"PONG\r\n")
        while await reader.read(1024):  # every later PING: silence, until the client hangs up
            pass
        writer.close()
        await writer.wait_closed()
        hung_up.append(writer)

    server = await asyncio.start_server(mute_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wire = await Wire.connect(f"nats://127.0.0.1:{port}", "test")
    try:
        await until(lambda: len(connections) >= 2)
    finally:
        await wire.close()
        server.close()
        await until(lambda: len(hung_up) == len(connections))
        await server.wait_closed()


def _cluster_node(tmp_path: Path, name: str, port: int, route: int, peer: int) -> LocalNats:
    """One of a cluster of two nats-servers on 127.0.0.1."""
    cluster = (
        f'cluster {{ name: wire-test, listen: "127.0.0.1:{route}", '
        f'routes: ["nats://127.0.0.1:{peer}"] }}'
    )
    return LocalNats(tmp_path / name, port=port, config=cluster, name=name).start()


async def test_it_fails_over_to_a_server_the_cluster_told_of(tmp_path: Path) -> None:
    """Only the first server is in the URL; the other is learnt from the server's INFO."""
    a_port, b_port, a_route, b_route = (free_port() for _ in range(4))
    a = _cluster_node(tmp_path, "a", a_port, a_route, b_route)
    b = _cluster_node(tmp_path, "b", b_port, b_route, a_route)
    wire = await Wire.connect(f"nats://127.0.0.1:{a_port}", "test")
    other = await Wire.connect(f"nats://127.0.0.1:{b_port}", "test-b")
    try:
        inbox = Inbox()
        wire.subscribe("wire.c", inbox)

        async def reached(count: int) -> None:
            # Published on b until a copy arrives through whatever server the wire is on.
            async with asyncio.timeout(20):
                while len(inbox.messages) < count:
                    other.publish("wire.c", b"%d" % count)
                    await asyncio.sleep(0.05)

        await reached(1)  # the route is up, so a has told the wire of b
        a.stop()
        await until(lambda: not wire.is_connected)
        await reached(len(inbox.messages) + 1)  # through b, the one server left
        assert wire.is_connected
    finally:
        await wire.close()
        await other.close()
        a.stop()
        b.stop()


@pytest.mark.parametrize(
    ("config", "good", "bad"),
    [
        (
            'authorization { user: berth, password: "s3cr:t" }',
            "nats://berth:s3cr%3At@",
            "nats://berth:wrong@",
        ),
        ("authorization { token: t0ken }", "nats://t0ken@", "nats://other@"),
    ],
    ids=["user-password", "token"],
)
async def test_credentials_in_the_url_are_presented_and_wrong_ones_refused(
    tmp_path: Path, config: str, good: str, bad: str
) -> None:
    server = LocalNats(tmp_path / "nats", config=config).start()
    try:
        wire = await Wire.connect(f"{good}127.0.0.1:{server.port}", "test")
        inbox = Inbox()
        wire.subscribe("wire.t8", inbox)
        wire.publish("wire.t8", b"in")
        await inbox.wait(1)
        await wire.close()
        with pytest.raises(BrokerUnavailable, match=r"(?i)authorization"):
            await Wire.connect(f"{bad}127.0.0.1:{server.port}", "test", timeout=5)
    finally:
        server.stop()


async def test_tls_urls_connect_over_tls_and_check_the_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    config = f'tls {{ cert_file: "{cert}", key_file: "{key}" }}'
    server = LocalNats(tmp_path / "nats", port=free_port(), config=config).start()
    try:
        # Not trusted yet: the handshake fails, and says so.
        with pytest.raises(BrokerUnavailable, match=r"(?i)certificate"):
            await Wire.connect(f"tls://127.0.0.1:{server.port}", "test", timeout=5)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        wire = await Wire.connect(f"tls://127.0.0.1:{server.port}", "test")
        inbox = Inbox()
        wire.subscribe("wire.t9", inbox)
        wire.publish("wire.t9", b"secret", headers={"A": "b"})
        (msg,) = await inbox.wait(1)
        assert (msg.data, msg.headers) == (b"secret", {"A": "b"})
        await wire.close()
    finally:
        server.stop()


class _Recorder:
    """Stands in for a socket: what the protocol writes back (PONGs)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


async def test_the_parser_gives_the_same_messages_however_the_stream_is_cut() -> None:
    """Every way of cutting the server's bytes into two or three reads parses alike."""
    header = b"NATS/1.0\r\nA: 1\r\n\r\n"
    stream = (
        b"MSG wire.p 1 5\r\nhello\r\n"
        b"PING\r\n"
        b"HMSG wire.p 1 wire.r %d %d\r\n%sbody\r\n"
        % (len(header), len(header) + 4, header)
        + b"MSG wire.p 1 wire.r 0\r\n\r\n"
        b"HMSG wire.p 1 16 16\r\nNATS/1.0 408\r\n\r\n\r\n"
    )
    expected = [
        ("wire.p", "", b"hello", None),
        ("wire.p", "wire.r", b"body", {"A": "1"}),
        ("wire.p", "wire.r", b"", None),
        ("wire.p", "", b"", {"Status": "408"}),
    ]
    wire = Wire("nats://127.0.0.1:1", "test")
    got: list[Message] = []
    wire.subscribe("wire.p", got.append)
    cuts = [(i, j) for i in range(1, len(stream)) for j in range(i, len(stream) + 1)]
    for i, j in cuts:
        got.clear()
        link = broker.wire._Link(wire)
        recorder = _Recorder()
        link.transport = recorder  # type: ignore[assignment]
        for part in (stream[:i], stream[i:j], stream[j:]):
            if part:
                link.data_received(part)
        assert [(m.subject, m.reply, m.data, m.headers) for m in got] == expected, (i, j)
        assert recorder.written == [b"PONG\r\n"], (i, j)


async def test_a_url_may_name_several_servers_and_the_first_that_answers_is_used(
    tmp_path: Path,
) -> None:
    """``nats://a,nats://b``: a dead first server is passed over, by the data path's
    connection and by nats-py's (the broker's), credentials given once."""
    from broker.connection import connect

    dead, b_port = free_port(), free_port()
    b = LocalNats(tmp_path / "b", port=b_port, token="t0ken", name="b").start()
    url = f"nats://t0ken@127.0.0.1:{dead},nats://127.0.0.1:{b_port}"
    wire = await Wire.connect(url, "test")
    broker = await connect(url, "test", timeout=2)
    try:
        inbox = Inbox()
        wire.subscribe("wire.several", inbox)
        await broker.nc.flush()
        async with asyncio.timeout(10):
            while not inbox.messages:
                await broker.nc.publish("wire.several", b"hi")
                await asyncio.sleep(0.05)
        assert inbox.messages[0].data == b"hi"
    finally:
        await wire.close()
        await broker.close()
        b.stop()
