"""A lean core-NATS connection for the data path: requests, pulls, replies and acks.

nats-py serves everything else (JetStream's API, KV, the object store). On the
path every request takes, its general machinery costs more than the protocol:
each publish wakes a flusher task through a queue, each message received wakes
a read-loop task and then the subscription's own task through another queue.
Here one ``asyncio.Protocol`` parses what arrives and calls the subscriber at
once; what is published in one turn of the loop goes out in one write at the
end of that turn. Measured in docs/performance.md (session 6).

What it speaks: the client side of the NATS protocol (INFO, CONNECT, PING/PONG,
SUB/UNSUB, PUB/HPUB in; MSG/HMSG, +OK, -ERR out), with user and password or a
token from the URL, TLS for ``tls://`` URLs or servers that require it, and
reconnection: a lost connection is retried every ``RECONNECT_WAIT`` seconds
until closed, in turn with the cluster's other servers that the server told of,
subscriptions are made again, and publishes made meanwhile (up to
``PENDING_LIMIT`` bytes) are sent once it is back, as nats-py does.

Subscribers are plain functions called from the protocol's ``data_received``:
they must not block (set a future, append to a queue). Writes have no flow
control of their own: what the data path sends is bounded by the requests in
flight, each at most ``max_payload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from shared.errors import BrokerUnavailable
from shared.waiting import wait_by

__all__ = ["Message", "Wire", "parse_headers"]

log = logging.getLogger(__name__)

RECONNECT_WAIT = 0.5
# Publishes held while the connection is down, in bytes; beyond it a publish fails.
PENDING_LIMIT = 8 * 1024 * 1024
# A payload larger than this is written from its own buffer instead of being copied
# into the command around it.
COPY_LIMIT = 64 * 1024
# A PING every this many seconds; this many unanswered ones and the connection is dead.
PING_INTERVAL = 20.0
MAX_PINGS_OUT = 3

_CRLF = b"\r\n"
_HEADER_LINE = "NATS/1.0\r\n"
# What bytes.strip() strips: ASCII whitespace only (str.strip() would take more).
_SPACE = " \t\n\r\x0b\x0c"


def parse_headers(raw: bytes) -> dict[str, str]:
    """A header block (``NATS/1.0[ status[ description]]`` and ``Name: value`` lines).

    A status line becomes ``Status`` and ``Description`` entries, as nats-py has them.
    The block is decoded once, not name by name and value by value (a third less time).
    """
    head, _, rest = raw.decode(errors="replace").partition("\r\n")
    headers: dict[str, str] = {}
    if len(head) > 8:
        status, _, description = head[8:].strip(_SPACE).partition(" ")
        if status.isascii() and status.isdigit():
            headers["Status"] = status
        if description:
            headers["Description"] = description
    for line in rest.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip(_SPACE)] = value.strip(_SPACE)
    return headers


class Message:
    """One message received: its headers are parsed when first read."""

    __slots__ = ("_headers", "_raw_headers", "data", "reply", "subject")

    def __init__(self, subject: str, reply: str, raw_headers: bytes, data: bytes):
        self.subject = subject
        self.reply = reply
        self.data = data
        self._raw_headers = raw_headers
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str] | None:
        if self._headers is None and self._raw_headers:
            self._headers = parse_headers(self._raw_headers)
        return self._headers

    def __repr__(self) -> str:
        return f"<Message {self.subject} {len(self.data)} bytes>"


Callback = Callable[[Message], None]


def _header_block(headers: dict[str, str]) -> bytes:
    block = _HEADER_LINE + "".join([f"{k}: {v}\r\n" for k, v in headers.items()]) + "\r\n"
    if block.count("\n") != len(headers) + 2:  # a line break inside a name or value
        raise ValueError(f"a NATS header may not contain a line break: {headers!r}")
    return block.encode()


class _Link(asyncio.Protocol):
    """One TCP (or TLS) connection to the server; the Wire outlives it."""

    def __init__(self, wire: Wire):
        self._wire = wire
        self.transport: asyncio.Transport | None = None
        self.info: asyncio.Future[dict[str, Any]] = wire.loop.create_future()
        self.pong: asyncio.Future[None] | None = None
        # What arrived of an incomplete operation, joined once it is all there: a large
        # message comes in many reads, and joining per read would copy it each time.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._need = 0  # bytes the buffered operation needs before it can be parsed
        self.pings_out = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.info, self.pong):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError(f"connection lost: {exc}"))
        self._wire._lost(self, exc)

    def data_received(self, data: bytes) -> None:
        if self._chunks:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered < self._need:
                return
            data = b"".join(self._chunks)
            self._chunks.clear()
        try:
            pos = self._parse(data)
        except Exception as exc:  # a protocol error: drop the connection, reconnect
            log.warning("nats wire: cannot parse what the server sent: %r", exc)
            assert self.transport is not None
            self.transport.abort()
            return
        if pos < len(data):
            rest = data[pos:] if pos else data
            self._chunks.append(rest)
            self._buffered = len(rest)

    def _parse(self, buf: bytes) -> int:
        """Handle every complete operation in ``buf``; where the first incomplete one starts."""
        pos, end = 0, len(buf)
        subs = self._wire._subs
        while pos < end:
            eol = buf.find(_CRLF, pos)
            if eol < 0:
                self._need = 0
                return pos
            op = buf[pos : pos + 4]
            if op == b"HMSG" or op == b"MSG ":
                args = buf[pos + 4 : eol].split()
                if op == b"HMSG":
                    hlen, tlen = int(args[-2]), int(args[-1])
                    reply = args[2] if len(args) == 5 else b""
                else:
                    hlen, tlen = 0, int(args[-1])
                    reply = args[2] if len(args) == 4 else b""
                start = eol + 2
                stop = start + tlen
                if stop + 2 > end:
                    self._need = stop + 2 - pos
                    return pos
                cb = subs.get(int(args[1]))
                pos = stop + 2
                if cb is None:
                    continue  # unsubscribed meanwhile
                msg = Message(
                    args[0].decode(),
                    reply.decode(),
                    buf[start : start + hlen],
                    buf[start + hlen : stop],
                )
                try:
                    cb(msg)
                except Exception:
                    log.exception("nats wire: subscriber of %s failed", msg.subject)
                continue
            line = buf[pos:eol]
            pos = eol + 2
            if op == b"PING":
                self.write(b"PONG\r\n")
            elif op == b"PONG":
                self.pings_out = 0
                if self.pong is not None and not self.pong.done():
                    self.pong.set_result(None)
            elif op == b"INFO":
                info = orjson.loads(line[5:])
                if not self.info.done():
                    self.info.set_result(info)
                else:  # the cluster changed
                    self._wire._learn(info)
            elif op == b"-ERR":
                self._wire._server_error(self, line[5:].strip(b" '").decode(errors="replace"))
            # +OK: not asked for (verbose is off)
        self._need = 0
        return pos

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Wire:
    """A core-NATS connection that stays up: subscribe, publish, close."""

    def __init__(self, url: str, name: str, *, timeout: float = 5.0):
        # One URL, or several separated by commas (the nodes of a cluster): the first's
        # scheme and credentials hold for all.
        urls = [u.strip() for u in url.split(",") if u.strip()]
        every = [urlsplit(u if "://" in u else f"nats://{u}") for u in urls or [url]]
        parts = every[0]
        if any(p.scheme not in ("nats", "tls") for p in every):
            raise BrokerUnavailable(f"the data path speaks nats:// and tls:// only, not {url!r}")
        self._scheme = parts.scheme
        # The servers in the URL first, then those the cluster tells of (INFO's
        # connect_urls): a reconnect tries the next one in turn, as nats-py does.
        self._servers: list[tuple[str, int]] = []
        for p in every:
            server = (p.hostname or "127.0.0.1", p.port or 4222)
            if server not in self._servers:
                self._servers.append(server)
        self._turn = 0  # where in _servers the next attempt starts
        self._current = self._servers[0]
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._name = name
        self._timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.max_payload = 1024 * 1024
        self._subs: dict[int, Callback] = {}
        self._subjects: dict[int, str] = {}
        self._next_sid = 0
        self._link: _Link | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._scattered = False  # _out holds a large payload apart from its command
        self._flushing = False
        self._closed = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._pinger: asyncio.TimerHandle | None = None
        # Requests: one wildcard inbox, a future per request keyed by its last token.
        self._inbox = ""
        self._answers: dict[str, asyncio.Future[Message]] = {}
        self._next_request = 0

    @classmethod
    async def connect(cls, url: str, name: str, *, timeout: float = 5.0) -> Wire:
        wire = cls(url, name, timeout=timeout)
        # Each server the URL names, in turn, until one answers.
        for tried in range(len(wire._servers)):
            try:
                await wire._open()
                break
            except (OSError, ConnectionError, TimeoutError, BrokerUnavailable) as exc:
                if tried + 1 == len(wire._servers):
                    raise BrokerUnavailable(
                        f"cannot connect to NATS at {wire._where}: {exc}"
                    ) from exc
        wire._schedule_ping()
        return wire

    @property
    def _where(self) -> str:
        host, port = self._current
        return f"{host}:{port}"

    def _learn(self, info: dict[str, Any]) -> None:
        """Servers of the cluster, from an INFO (at connect, or sent later as it changes)."""
        for url in info.get("connect_urls") or ():
            host, _, port = str(url).rpartition(":")
            server = (host.strip("[]"), int(port))
            if server not in self._servers:
                self._servers.append(server)

    @property
    def is_connected(self) -> bool:
        return self._link is not None

    async def wait_connected(self) -> None:
        """Until the connection is up (at once if it is)."""
        await self._up.wait()

    # -- the connection ----------------------------------------------------------------
    async def _open(self) -> None:
        """Connect, introduce ourselves, and make every subscription again."""
        async with asyncio.timeout(self._timeout):
            host, port = self._current = self._servers[self._turn % len(self._servers)]
            self._turn += 1
            _, link = await self.loop.create_connection(lambda: _Link(self), host, port)
            try:
                info = await link.info
                self._learn(info)
                tls = self._scheme == "tls" or bool(info.get("tls_required"))
                if tls:
                    assert link.transport is not None
                    transport = await self.loop.start_tls(
                        link.transport,
                        link,
                        ssl.create_default_context(),
                        server_hostname=host,
                    )
                    link.transport = transport
                self.max_payload = int(info.get("max_payload", self.max_payload))
                link.write(self._connect_command(tls) + b"PING\r\n")
                link.pong = self.loop.create_future()
                await link.pong
            except BaseException:
                if link.transport is not None:
                    link.transport.abort()
                raise
        link.pong = None
        self._link = link
        self._up.set()
        resubscribe = [b"SUB %s %d\r\n" % (s.encode(), sid) for sid, s in self._subjects.items()]
        if resubscribe:
            link.write(b"".join(resubscribe))
        self.flush()

    def _connect_command(self, tls: bool) -> bytes:
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "tls_required": tls,
            "name": self._name,
            "lang": "python3",
            "version": "berth-wire",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
        }
        if self._user is not None and self._password is not None:
            options["user"], options["pass"] = self._user, self._password
        elif self._user is not None:
            options["auth_token"] = self._user
        return b"CONNECT " + orjson.dumps(options) + _CRLF

    def _server_error(self, link: _Link, error: str) -> None:
        if link.pong is not None and not link.pong.done():  # refused at connect: auth, say
            link.pong.set_exception(BrokerUnavailable(f"NATS refused the connection: {error}"))
        else:
            log.warning("nats wire: server error: %s", error)

    def _lost(self, link: _Link, exc: Exception | None) -> None:
        if link is not self._link:
            return  # a connection that never finished opening
        self._link = None
        self._up.clear()
        if self._closed:
            return
        log.warning("nats wire: disconnected from %s%s", self._where, f": {exc}" if exc else "")
        self._reconnecting = self.loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._closed:
            await asyncio.sleep(RECONNECT_WAIT)
            try:
                await self._open()
            except (OSError, ConnectionError, TimeoutError, BrokerUnavailable) as exc:
                log.debug("nats wire: reconnecting to %s: %r", self._where, exc)
                continue
            log.info("nats wire: reconnected to %s", self._where)
            return

    def _schedule_ping(self) -> None:
        self._pinger = self.loop.call_later(PING_INTERVAL, self._ping)

    def _ping(self) -> None:
        link = self._link
        if link is not None:
            if link.pings_out >= MAX_PINGS_OUT:
                log.warning("nats wire: %s stopped answering pings", self._where)
                assert link.transport is not None
                link.transport.abort()  # connection_lost starts the reconnect
            else:
                link.pings_out += 1
                link.write(b"PING\r\n")
        if not self._closed:
            self._schedule_ping()

    async def close(self) -> None:
        """Send what is pending and close; subscriptions end with it."""
        if self._closed:
            return
        self._closed = True
        if self._pinger is not None:
            self._pinger.cancel()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        self.flush()
        link, self._link = self._link, None
        self._subs.clear()
        if link is not None and link.transport is not None:
            link.transport.close()  # sends what the transport still holds first

    # -- subscribing and publishing ----------------------------------------------------
    def subscribe(self, subject: str, cb: Callback) -> int:
        """Call ``cb`` with each message on ``subject`` (wildcards allowed); a subscription id."""
        self._next_sid += 1
        sid = self._next_sid
        self._subs[sid] = cb
        self._subjects[sid] = subject
        if self._link is not None:  # else made when the connection is back
            self._link.write(b"SUB %s %d\r\n" % (subject.encode(), sid))
        return sid

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Publish with a reply subject and wait for the one answer (JetStream's API speaks so).

        BrokerUnavailable when nobody listens on ``subject``, or no answer comes in
        ``timeout`` seconds (the connection's own timeout by default).
        """
        if not self._inbox:
            self._inbox = f"_INBOX.{secrets.token_hex(11)}"
            self.subscribe(f"{self._inbox}.*", self._on_answer)
        self._next_request += 1
        token = str(self._next_request)
        answer: asyncio.Future[Message] = self.loop.create_future()
        self._answers[token] = answer
        try:
            self.publish(subject, payload, reply=f"{self._inbox}.{token}", headers=headers)
            msg = await wait_by(answer, self.loop.time() + (timeout or self._timeout))
        except TimeoutError:
            raise BrokerUnavailable(f"no answer from NATS on {subject} in time") from None
        finally:
            self._answers.pop(token, None)
        if not msg.data and (msg.headers or {}).get("Status") == "503":
            raise BrokerUnavailable(
                f"nobody answers on {subject} (status 503: no stream or service)"
            )
        return msg

    def _on_answer(self, msg: Message) -> None:
        answer = self._answers.get(msg.subject.rsplit(".", 1)[-1])
        if answer is not None and not answer.done():
            answer.set_result(msg)

    def unsubscribe(self, sid: int) -> None:
        self._subs.pop(sid, None)
        if self._subjects.pop(sid, None) is not None and self._link is not None:
            self._link.write(b"UNSUB %d\r\n" % sid)

    def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue a message; it goes out with the rest of this turn's at the end of the turn.

        Raises BrokerUnavailable when closed, or when the connection has been down
        long enough that ``PENDING_LIMIT`` bytes wait for it.
        """
        if self._closed:
            raise BrokerUnavailable("the NATS connection is closed")
        if len(payload) > self.max_payload:
            raise BrokerUnavailable(
                f"message of {len(payload)} bytes exceeds NATS's max_payload ({self.max_payload})"
            )
        if headers:
            block = _header_block(headers)
            head = b"HPUB %s %s %d %d\r\n%s" % (
                subject.encode(),
                reply.encode(),
                len(block),
                len(block) + len(payload),
                block,
            )
        else:
            head = b"PUB %s %s %d\r\n" % (subject.encode(), reply.encode(), len(payload))
        size = len(head) + len(payload) + 2
        if self._link is None:
            if self._out_size + size > PENDING_LIMIT:
                raise BrokerUnavailable(f"NATS at {self._where} is unreachable")
            self._out_size += size
        if len(payload) > COPY_LIMIT:  # sent from where it lies, not copied into a command
            self._out += (head, payload, _CRLF)
            self._scattered = True
        else:
            self._out.append(head + payload + _CRLF)
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what is queued now, not at the end of the turn."""
        self._flushing = False
        link = self._link
        if link is None or not self._out:
            return
        out, self._out, self._out_size = self._out, [], 0
        if len(out) == 1:
            link.write(out[0])
        elif self._scattered:  # one writev, without copying the large payloads
            self._scattered = False
            assert link.transport is not None
            link.transport.writelines(out)
        else:
            link.write(b"".join(out))
