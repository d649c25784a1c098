"""The request and reply envelopes: metadata in NATS headers, the raw body as payload.

No base64, no pickle: a body crosses NATS byte for byte. Headers forwarded from
the caller travel as one JSON list so repeated names and their order survive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from shared.errors import HeadersTooLarge

__all__ = ["MAX_HEADER_BLOCK", "H", "Reply", "RequestEnvelope", "StreamPart"]

# JetStream refuses a message whose header block is 64 KiB or more. A request's
# envelope gains a reply subject, a deadline and perhaps a claim check after the
# caller's headers are counted: this much is kept for them.
MAX_HEADER_BLOCK = 65535
_ENVELOPE_ROOM = 1024


class H:
    """Header names of the envelope (part of the wire contract)."""

    MSG_ID = "Nats-Msg-Id"
    REPLY = "Berth-Reply"
    METHOD = "Berth-Method"
    PATH = "Berth-Path"
    QUERY = "Berth-Query"
    DEADLINE = "Berth-Deadline"
    HEADERS = "Berth-Headers"
    TRACEPARENT = "traceparent"
    STATUS = "Berth-Status"
    ERROR = "Berth-Error"
    REPLICA = "Berth-Replica"
    # A streamed request (Accept: text/event-stream); its reply comes in parts.
    STREAM = "Berth-Stream"
    # The part of a streamed reply: "head" (status and headers), "chunk", or "end".
    PART = "Berth-Part"
    # The body is in the object store under this name (a claim check: see broker/bodies.py).
    BODY_REF = "Berth-Body-Ref"


Headers = list[tuple[str, str]]


@dataclass(slots=True)
class RequestEnvelope:
    request_id: str
    method: str
    path: str
    query: str = ""
    headers: Headers = field(default_factory=list)
    deadline: float = 0.0  # unix time; 0 = none
    reply_to: str = ""
    traceparent: str | None = None
    stream: bool = False
    body_ref: str | None = None

    def to_headers(self) -> dict[str, str]:
        h = {
            H.MSG_ID: self.request_id,
            H.METHOD: self.method,
            H.PATH: self.path,
            H.HEADERS: orjson.dumps(self.headers).decode(),
        }
        if self.query:
            h[H.QUERY] = self.query
        if self.deadline:
            h[H.DEADLINE] = repr(self.deadline)
        if self.reply_to:
            h[H.REPLY] = self.reply_to
        if self.traceparent:
            h[H.TRACEPARENT] = self.traceparent
        if self.stream:
            h[H.STREAM] = "1"
        if self.body_ref:
            h[H.BODY_REF] = self.body_ref
        return h

    @classmethod
    def from_headers(cls, h: dict[str, str]) -> RequestEnvelope:
        return cls(
            request_id=h.get(H.MSG_ID, ""),
            method=h.get(H.METHOD, "POST"),
            path=h.get(H.PATH, "/"),
            query=h.get(H.QUERY, ""),
            headers=[(k, v) for k, v in orjson.loads(h.get(H.HEADERS, "[]"))],
            deadline=float(h.get(H.DEADLINE, "0") or 0),
            reply_to=h.get(H.REPLY, ""),
            traceparent=h.get(H.TRACEPARENT),
            stream=H.STREAM in h,
            body_ref=h.get(H.BODY_REF),
        )

    def check_fits(self) -> None:
        """HeadersTooLarge (431) when the envelope cannot be queued for its headers' size.

        Counted as the header block is written: ``Name: value\\r\\n`` per entry.
        """
        size = sum(len(k) + len(v.encode()) + 4 for k, v in self.to_headers().items())
        if size + _ENVELOPE_ROOM > MAX_HEADER_BLOCK:
            raise HeadersTooLarge(
                f"the request's headers take {size} bytes; at most "
                f"{MAX_HEADER_BLOCK - _ENVELOPE_ROOM} fit in the queue"
            )

    def expired(self, now: float | None = None) -> bool:
        return bool(self.deadline) and (now or time.time()) >= self.deadline


@dataclass(slots=True)
class Reply:
    """A replica's answer (or Berth's own error, when ``error`` is set)."""

    status: int
    body: bytes
    headers: Headers = field(default_factory=list)
    error: str | None = None  # a BerthError code when Berth itself failed the request
    replica_id: str | None = None
    body_ref: str | None = None  # the body is in the object store

    def to_headers(self) -> dict[str, str]:
        h = {H.STATUS: str(self.status), H.HEADERS: orjson.dumps(self.headers).decode()}
        if self.error:
            h[H.ERROR] = self.error
        if self.replica_id:
            h[H.REPLICA] = self.replica_id
        if self.body_ref:
            h[H.BODY_REF] = self.body_ref
        return h

    @classmethod
    def from_message(cls, headers: dict[str, str] | None, body: bytes) -> Reply:
        h = headers or {}
        return cls(
            status=int(h.get(H.STATUS, "502")),
            body=body,
            headers=[(k, v) for k, v in orjson.loads(h.get(H.HEADERS, "[]"))],
            error=h.get(H.ERROR),
            replica_id=h.get(H.REPLICA),
            body_ref=h.get(H.BODY_REF),
        )

    @classmethod
    def failure(cls, status: int, code: str, message: str) -> Reply:
        body = orjson.dumps({"error": {"code": code, "message": message}})
        return cls(
            status=status, body=body, headers=[("content-type", "application/json")], error=code
        )


@dataclass(slots=True)
class StreamPart:
    """One message of a streamed reply: ``kind`` is "head", "chunk" or "end", or None for
    a whole answer sent instead (an error, or Berth's own)."""

    kind: str | None
    headers: dict[str, str] | None
    data: bytes

    def reply(self) -> Reply:
        return Reply.from_message(self.headers, self.data)
