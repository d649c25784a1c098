"""The JetStream layout: streams, per-endpoint consumers, KV buckets, object store.

Everything here is idempotent: every process calls :func:`ensure_layout` at
start-up, and the API calls :func:`ensure_endpoint_consumer` whenever an
endpoint's limits change.
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass
from typing import Any

import orjson
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

from broker.connection import Broker
from broker.wire import parse_headers
from shared import names
from shared.errors import BrokerUnavailable, TooManyEndpoints
from shared.messages import EndpointSpec

__all__ = [
    "MAX_ENDPOINTS",
    "Backlog",
    "WrongLastRevision",
    "backlog",
    "delete_endpoint_consumer",
    "dequeue",
    "ensure_endpoint_consumer",
    "ensure_layout",
    "ensure_stream",
    "js_publish",
    "kv_read",
    "kv_write",
    "pin_queue_tail",
]

# How many times one request is handed to a replica before it is failed for good.
MAX_DELIVER = 5
DUPLICATE_WINDOW = 120.0
# Endpoints a deployment can have: one consumer each on the requests stream. Set on
# the stream because nats-server (2.15 on) otherwise caps every stream at 1,000.
MAX_ENDPOINTS = 100_000
JS_MAX_CONSUMERS = 10026  # JetStream's error code: maximum consumers limit reached


async def ensure_layout(broker: Broker, *, replica_ttl: float = 30.0) -> None:
    js = broker.js
    await ensure_stream(
        broker,
        StreamConfig(
            name=names.REQUESTS_STREAM,
            subjects=[f"{names.REQUEST_SUBJECT_PREFIX}*"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            max_msg_size=-1,
            max_consumers=MAX_ENDPOINTS,
            allow_rollup_hdrs=True,  # for the tail pin
        ),
    )
    await ensure_stream(
        broker,
        StreamConfig(
            name=names.EVENTS_STREAM,
            subjects=[f"{names.EVENT_SUBJECT_PREFIX}>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=7 * 24 * 3600.0,
            max_msgs=1_000_000,
        ),
    )
    await ensure_stream(
        broker,
        StreamConfig(
            name=names.LOGS_STREAM,
            subjects=[f"{names.LOG_SUBJECT_PREFIX}>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=7 * 24 * 3600.0,
            max_bytes=2 * 1024**3,
        ),
    )
    for bucket, ttl in (
        (names.KV_ENDPOINTS, None),
        (names.KV_REPLICAS, replica_ttl),
        (names.KV_AGENTS, replica_ttl),
        (names.KV_LEASES, names.LEASE_TTL),
        (names.KV_HEALTH, None),
    ):
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(bucket=bucket, history=1, ttl=ttl)
    try:
        await js.object_store(names.OBJ_MODELS)
    except (BucketNotFoundError, NotFoundError):
        await js.create_object_store(names.OBJ_MODELS)


async def pin_queue_tail(broker: Broker) -> None:
    """Keep the requests stream's last block from ever being empty.

    With work-queue retention an ack deletes its message, and nats-server deletes a
    last block that empties and creates a new file in its place: an endpoint whose
    queue drains after each request (any endpoint under light load) cost a file
    create and unlink per request, a fifth of nats-server's CPU (docs/performance.md).
    One message on a subject no endpoint has keeps the tail block non-empty; the
    rollup header drops the previous pin, so the stream holds one however often
    this runs. A pin sits in the block it landed in: once that block is full and a
    new one starts, the next pin holds the new one.
    """
    await broker.js.publish(names.TAIL_PIN_SUBJECT, b"", headers={"Nats-Rollup": "sub"})


async def ensure_stream(broker: Broker, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await broker.js.stream_info(config.name)
    except NotFoundError:
        await broker.js.add_stream(config)
    else:
        await broker.js.update_stream(config)


def ack_wait_for(spec: EndpointSpec, ack_wait: float) -> float:
    # In-progress acks keep long requests alive, so ack_wait only bounds how
    # long a request stays invisible after its agent vanished.
    return max(1.0, min(ack_wait, spec.request_timeout))


async def ensure_endpoint_consumer(
    broker: Broker, spec: EndpointSpec, *, ack_wait: float = 30.0
) -> None:
    """Create or update the endpoint's durable pull consumer (``ep-<name>``)."""
    config = ConsumerConfig(
        durable_name=names.consumer_name(spec.name),
        filter_subject=names.request_subject(spec.name),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_for(spec, ack_wait),
        max_deliver=MAX_DELIVER,
        max_ack_pending=max(1, spec.max_replicas * spec.concurrency_per_replica),
        max_waiting=4096,
    )
    try:
        await broker.js.add_consumer(names.REQUESTS_STREAM, config)
    except BadRequestError as exc:
        if exc.err_code != JS_MAX_CONSUMERS:
            raise
        raise TooManyEndpoints(
            f"no room for endpoint {spec.name!r}: the requests stream holds at most "
            f"{MAX_ENDPOINTS} endpoints' queues; delete unused endpoints"
        ) from exc


async def delete_endpoint_consumer(broker: Broker, endpoint: str) -> None:
    with contextlib.suppress(NotFoundError):
        await broker.js.delete_consumer(names.REQUESTS_STREAM, names.consumer_name(endpoint))
    await broker.js.purge_stream(names.REQUESTS_STREAM, subject=names.request_subject(endpoint))


async def dequeue(broker: Broker, seq: int) -> bool:
    """Take a request out of the queue by its sequence; False if it is not there any more
    (delivered already, answered, or JetStream away)."""
    try:
        return await broker.js.delete_msg(names.REQUESTS_STREAM, seq)
    except Exception:  # nats-py raises a plain APIError for a missing message
        return False


@dataclass(frozen=True, slots=True)
class Backlog:
    queued: int
    in_flight: int
    # Deliveries the consumer has made so far (redeliveries included).
    delivered: int = 0


async def _ask_jetstream(
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
    for the three numbers wanted: 230 µs here against nats-py's 400 (its request
    path, and a dataclass for every part of the answer). The API asks on every
    async job and every poll of one, the scaler on every pass over an endpoint.
    """
    stream, consumer = names.REQUESTS_STREAM, names.consumer_name(endpoint)
    info = await _ask_jetstream(broker, f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")
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
    ack = await _ask_jetstream(broker, subject, payload, headers)
    error = ack.get("error")
    if error is not None:
        if error.get("err_code") in (10071, 10164):  # the subject's last sequence differs
            raise WrongLastRevision(error.get("description", ""))
        raise BrokerUnavailable(f"JetStream refused a publish on {subject}: {error}")
    return int(ack["seq"])


async def kv_write(broker: Broker, bucket: str, key: str, value: bytes, last: int) -> int:
    """Write ``key`` if its latest revision is ``last`` (0: if it does not exist); the new revision.

    What nats-py's ``KeyValue.update`` and ``create`` (for a key never written) do.
    Raises WrongLastRevision when another write came first.
    """
    headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
    return await js_publish(broker, f"$KV.{bucket}.{key}", value, headers)


async def kv_read(broker: Broker, bucket: str, key: str) -> tuple[bytes, int] | None:
    """``key``'s value and revision, or None if it has none (never written, or deleted).

    What nats-py's ``KeyValue.get`` does for a bucket without direct gets, on the
    data-path connection.
    """
    request = orjson.dumps({"last_by_subj": f"$KV.{bucket}.{key}"})
    answer = await _ask_jetstream(broker, f"$JS.API.STREAM.MSG.GET.KV_{bucket}", request)
    error = answer.get("error")
    if error is not None:
        if error.get("code") == 404:
            return None
        raise BrokerUnavailable(f"JetStream could not read {bucket}: {error}")
    stored = answer["message"]
    if stored.get("hdrs"):
        operation = parse_headers(base64.b64decode(stored["hdrs"])).get("KV-Operation")
        if operation in ("DEL", "PURGE"):
            return None
    return base64.b64decode(stored.get("data") or b""), int(stored["seq"])
