"""JetStream spoken by hand on the data-path connection (:mod:`broker.wire`).

The operations on every request's path, where nats-py's general machinery (a
request path with its own inbox and tasks, a dataclass for every part of an
answer) costs more than the operation itself: consumer info read for three
numbers, acked publishes, compare-and-set writes and reads of KV entries, pull
requests and their statuses, and what a delivery's ack subject says. Everything
else of JetStream (creating streams, consumers, buckets; watches) goes through
nats-py in :mod:`broker.streams` and the modules that use it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from broker.connection import Broker
from broker.wire import Message, parse_headers
from shared import names
from shared.errors import BrokerUnavailable

__all__ = [
    "NOTHING",
    "Backlog",
    "ErrorCode",
    "WrongLastRevision",
    "ack_fields",
    "attempt",
    "backlog",
    "js_publish",
    "kv_read",
    "kv_write",
    "next_request",
    "next_subject",
    "queued_at",
    "status",
]


class ErrorCode:
    """JetStream's error codes (``err_code`` in an API answer) that Berth acts on."""

    # A publish's Nats-Expected-Last-Subject-Sequence did not hold (a KV compare-and-set lost).
    WRONG_LAST_SEQUENCE = 10071
    # The same, as nats-server 2.11+ says it for a KV key that changed.
    WRONG_LAST_SUBJECT_SEQUENCE = 10164
    # The stream has as many consumers as it may (an endpoint too many).
    MAX_CONSUMERS = 10026


# Statuses that end a pull with nothing, normally: it expired, or found nothing.
NOTHING = frozenset({"404", "408"})
HEARTBEAT = "100"


@dataclass(frozen=True, slots=True)
class Backlog:
    queued: int
    in_flight: int
    # Deliveries the consumer has made so far (redeliveries included).
    delivered: int = 0


async def ask(
    broker: Broker, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """A JetStream request on the data-path connection: its JSON answer, an error included."""
    wire = await broker.wire()
    msg = await wire.request(subject, payload, headers=headers, timeout=broker.timeout)
    try:
        answer = orjson.loads(msg.data)
    except orjson.JSONDecodeError as exc:
        raise BrokerUnavailable(
            f"JetStream gave no answer on {subject}: {msg.data[:200]!r}"
        ) from exc
    if not isinstance(answer, dict):
        raise BrokerUnavailable(f"JetStream gave no answer on {subject}: {msg.data[:200]!r}")
    return answer


async def backlog(broker: Broker, endpoint: str) -> Backlog | None:
    """Queued and in-flight requests of an endpoint, or None if it has no consumer.

    JetStream's consumer-info request, asked on the data-path connection and read
    for the three numbers wanted, without nats-py's request path and a dataclass
    for every part of the answer. The API asks on every
    async job and every poll of one, the scaler on every pass over an endpoint.
    """
    stream, consumer = names.REQUESTS_STREAM, names.consumer_name(endpoint)
    info = await ask(broker, f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")
    error = info.get("error")
    if error is not None:
        if error.get("code") == 404:  # no such consumer (or stream): no endpoint
            return None
        raise BrokerUnavailable(f"JetStream: {error.get('description') or error}")
    return Backlog(
        queued=info.get("num_pending") or 0,
        in_flight=info.get("num_ack_pending") or 0,
        delivered=(info.get("delivered") or {}).get("consumer_seq") or 0,
    )


class WrongLastRevision(Exception):
    """A key changed since the revision a compare-and-set write named."""


async def js_publish(
    broker: Broker, subject: str, payload: bytes, headers: dict[str, str] | None = None
) -> int:
    """A JetStream publish on the data-path connection, acked; the stream sequence.

    What nats-py's ``js.publish`` does, at about half the time. Raises
    WrongLastRevision when an expected-last-sequence header did not hold, and
    BrokerUnavailable for any other refusal.
    """
    ack = await ask(broker, subject, payload, headers)
    error = ack.get("error")
    if error is not None:
        if error.get("err_code") in (
            ErrorCode.WRONG_LAST_SEQUENCE,
            ErrorCode.WRONG_LAST_SUBJECT_SEQUENCE,
        ):
            raise WrongLastRevision(error.get("description", ""))
        raise BrokerUnavailable(f"JetStream refused a publish on {subject}: {error}")
    return int(ack["seq"])


async def kv_write(broker: Broker, bucket: str, key: str, value: bytes, last: int) -> int:
    """Write ``key`` if its latest revision is ``last`` (0: if it has no value: never
    written, or deleted); the new revision. Raises WrongLastRevision when another write
    came first. What nats-py's ``KeyValue.update`` and ``create`` do.
    """
    subject = f"$KV.{bucket}.{key}"
    headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
    try:
        return await js_publish(broker, subject, value, headers)
    except WrongLastRevision:
        if last != 0:
            raise
        found = await _kv_last(broker, bucket, key)
        if found is None or not found[2]:  # a value is there: created by another
            raise
        # Deleted: made again on top of its delete marker, as nats-py's create does.
        headers["Nats-Expected-Last-Subject-Sequence"] = str(found[1])
        return await js_publish(broker, subject, value, headers)


async def kv_read(broker: Broker, bucket: str, key: str) -> tuple[bytes, int] | None:
    """``key``'s value and revision, or None if it has none (never written, or deleted).

    What nats-py's ``KeyValue.get`` does for a bucket without direct gets, on the
    data-path connection.
    """
    found = await _kv_last(broker, bucket, key)
    if found is None or found[2]:
        return None
    return found[0], found[1]


async def _kv_last(broker: Broker, bucket: str, key: str) -> tuple[bytes, int, bool] | None:
    """``key``'s last entry: (value, revision, whether it is a delete marker), or None."""
    request = orjson.dumps({"last_by_subj": f"$KV.{bucket}.{key}"})
    answer = await ask(broker, f"$JS.API.STREAM.MSG.GET.KV_{bucket}", request)
    error = answer.get("error")
    if error is not None:
        if error.get("code") == 404:
            return None
        raise BrokerUnavailable(f"JetStream could not read {bucket}: {error}")
    stored = answer["message"]
    deleted = False
    if stored.get("hdrs"):
        operation = parse_headers(base64.b64decode(stored["hdrs"])).get("KV-Operation")
        deleted = operation in ("DEL", "PURGE")
    return base64.b64decode(stored.get("data") or b""), int(stored["seq"]), deleted


def status(msg: Message) -> str | None:
    """A status message's code (JetStream's answers to a pull carry no payload), or None."""
    if msg.data or not msg.headers:
        return None
    return msg.headers.get("Status")


def ack_fields(reply: str) -> tuple[int, int]:
    """(times delivered, when stored in ns) from a JetStream delivery's reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or the
    longer form with a domain and an account hash after ``$JS.ACK``.
    """
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError(f"not a JetStream delivery: {reply!r}")
    at = 2 if len(tokens) == 9 else 4
    return int(tokens[at + 2]), int(tokens[at + 5])


def attempt(reply: str) -> int:
    """How many times this request has been delivered, this time included."""
    return ack_fields(reply)[0]


def queued_at(reply: str) -> float:
    """When the request entered the queue (unix time)."""
    return ack_fields(reply)[1] / 1e9


def next_subject(endpoint: str) -> str:
    """Where a pull for ``endpoint``'s consumer is asked."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{names.REQUESTS_STREAM}.{names.consumer_name(endpoint)}"


def next_request(expires: float) -> bytes:
    """A pull for one message, which the server ends with a 408 after ``expires`` seconds."""
    return orjson.dumps({"batch": 1, "expires": int(expires * 1e9)})
