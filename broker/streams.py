"""The JetStream layout: streams, per-endpoint consumers, KV buckets, object store.

Everything here is idempotent: every process calls :func:`ensure_layout` at
start-up, and the API calls :func:`ensure_endpoint_consumer` whenever an
endpoint's limits change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)

from broker.connection import Broker
from broker.jetstream import ErrorCode
from shared import names
from shared.errors import BrokerUnavailable, TooManyEndpoints
from shared.messages import EndpointSpec

__all__ = [
    "MAX_ENDPOINTS",
    "delete_endpoint_consumer",
    "dequeue",
    "ensure_endpoint_consumer",
    "ensure_layout",
    "ensure_stream",
    "pin_queue_tail",
    "until_laid_out",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

# How many times one request is handed to a replica before it is failed for good.
MAX_DELIVER = 5
DUPLICATE_WINDOW = 120.0
# Endpoints a deployment can have: one consumer each on the requests stream. Set on
# the stream because nats-server (2.15 on) otherwise caps every stream at 1,000.
MAX_ENDPOINTS = 100_000


# JetStream answers that mean "not yet" while a cluster elects its leaders, or while
# several of Berth's processes make the same stream at once: the layout is tried again.
_NOT_YET = (NatsTimeout, NoRespondersError, ServiceUnavailableError, ServerError)


async def until_answered(make: Callable[[], Awaitable[T]], what: str, *, limit: float) -> T:
    """``make()`` (idempotent), again while JetStream says "not yet", for ``limit`` s; past
    that, BrokerUnavailable naming ``what``."""
    deadline = time.monotonic() + limit
    pause = 0.2
    while True:
        try:
            return await make()
        except _NOT_YET as exc:
            if time.monotonic() + pause > deadline:
                raise BrokerUnavailable(f"JetStream did not answer {what}: {exc!r}") from exc
            log.warning("JetStream is not ready for %s (%r); trying again", what, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


async def until_laid_out(
    make: Callable[[], Awaitable[None]], what: str, *, limit: float = 60.0
) -> None:
    """Lay out a stream or bucket, again while JetStream says "not yet", for ``limit`` s."""
    await until_answered(make, what, limit=limit)


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
            num_replicas=broker.replicas,
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
            num_replicas=broker.replicas,
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
            num_replicas=broker.replicas,
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
            await js.create_key_value(bucket=bucket, history=1, ttl=ttl, replicas=broker.replicas)
    try:
        await js.object_store(names.OBJ_MODELS)
    except (BucketNotFoundError, NotFoundError):
        await js.create_object_store(
            names.OBJ_MODELS, config=ObjectStoreConfig(replicas=broker.replicas)
        )


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
        if exc.err_code != ErrorCode.MAX_CONSUMERS:
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
