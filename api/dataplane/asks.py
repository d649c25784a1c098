"""What a data-plane request asks besides itself: Berth's headers parsed and checked,
what is forwarded to a replica and returned from it, and whole answers written."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import orjson
from starlette.types import Message, Receive, Send

from api.http import Answer
from broker.envelope import Reply
from shared.errors import (
    BerthError,
    BodyTooLarge,
    InvalidRequest,
)

# Never forwarded to a replica: transport headers, Berth's own credentials and controls.
NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        # The API answers a caller's Expect itself (uvicorn sends 100 Continue when the
        # body is read); the whole body travels in the queue, so a replica has none to await.
        b"expect",
        b"authorization",
        # Only the agent speaks for a replica (workers/service.py: REPLICA_KEY_HEADER).
        b"x-berth-replica-key",
        b"proxy-authorization",
        b"x-octoai-async",
        b"prefer",
        b"idempotency-key",
        b"x-berth-deadline",
        b"x-berth-callback-url",
    }
)


# The API's own server adds these; the replica's copies would be duplicates.
NOT_RETURNED = frozenset({"content-length", "date", "server", "connection", "transfer-encoding"})


MAX_WAIT = 3600.0


MAX_IDEMPOTENCY_KEY = 255


# Headers whose values come to less than this always fit in the queue's header block.
HEADERS_CHECKED_OVER = 32 * 1024


class Ask:
    """What the caller asked for besides the request itself (Berth's own headers)."""

    __slots__ = ("callback_url", "deadline", "idempotency_key", "is_async", "stream", "wait")

    def __init__(self) -> None:
        self.is_async = False
        self.wait: float | None = None
        self.deadline: float | None = None
        self.idempotency_key: str | None = None
        self.callback_url: str | None = None
        self.stream = False


def parse_prefer(value: str, ask: Ask) -> None:
    """RFC 7240: ``respond-async`` makes a job; ``wait=N`` a job answered inline within N s."""
    for pref in value.split(","):
        token, _, arg = pref.strip().partition("=")
        token = token.strip().lower()
        if token == "respond-async":
            ask.is_async = True
        elif token == "wait":
            try:
                wait = float(arg.strip().strip('"'))
            except ValueError:
                raise InvalidRequest(f"Prefer: wait={arg!r} is not a number of seconds") from None
            if not 0 <= wait <= MAX_WAIT:
                raise InvalidRequest(f"Prefer: wait must be between 0 and {MAX_WAIT:g} seconds")
            ask.wait = wait


def idempotency_value(raw: bytes) -> str | None:
    key = raw.decode("latin-1").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY:
        # Cutting it would make two different keys one job.
        raise InvalidRequest(f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY} characters")
    return key or None


def parse_deadline(value: str, now: float) -> float:
    """``X-Berth-Deadline``: seconds from now, or an ISO 8601 time with its offset."""
    value = value.strip()
    try:
        seconds: float | None = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 < seconds < math.inf:  # also refuses nan
            raise InvalidRequest("X-Berth-Deadline must be a positive, finite number of seconds")
        deadline = now + seconds
    else:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                "X-Berth-Deadline must be seconds from now or an ISO 8601 time"
            ) from None
        if when.tzinfo is None:
            raise InvalidRequest("X-Berth-Deadline needs a time zone (e.g. 2026-01-01T12:00:00Z)")
        deadline = when.timestamp()
    if deadline <= now:
        raise InvalidRequest("X-Berth-Deadline has passed already")
    return deadline


def take_callback(query: str) -> tuple[str, str | None]:
    """The ``callback_url`` query parameter is Berth's: taken out of what the replica sees
    (the other parameters stay byte for byte)."""
    if "callback_url=" not in query:
        return query, None
    kept, url = [], None
    for pair in query.split("&"):
        if pair.startswith("callback_url="):
            url = unquote_plus(pair.removeprefix("callback_url="))
        else:
            kept.append(pair)
    return "&".join(kept), url


def reply_headers(reply: Reply) -> list[tuple[bytes, bytes]]:
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in reply.headers
        if k.lower() not in NOT_RETURNED
    ]
    if reply.replica_id:
        headers.append((b"x-berth-replica", reply.replica_id.encode()))
    return headers


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected()
        chunk: Any = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is over the {limit}-byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Disconnected(BerthError):
    status_code = 499
    code = "client_disconnected"

    def __init__(self) -> None:
        super().__init__("the client went away")


def error_answer(exc: BerthError) -> Answer:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    headers.append((b"content-type", b"application/json"))
    return exc.status_code, headers, orjson.dumps(exc.to_json())


async def send_whole(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
