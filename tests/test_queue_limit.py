"""Admission against max_queue_length, against a real nats-server's queue."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from api.queue_limit import QueueLimit
from broker.connection import Broker
from broker.pull import Puller
from broker.streams import ensure_endpoint_consumer
from shared import names
from shared.errors import QueueFull
from shared.messages import EndpointSpec


async def endpoint(broker: Broker) -> str:
    name = f"ep-{secrets.token_hex(3)}"
    await ensure_endpoint_consumer(broker, EndpointSpec(name=name))
    return name


async def enqueue(broker: Broker, name: str, count: int) -> None:
    for i in range(count):
        await broker.js.publish(names.request_subject(name), b"%d" % i)


async def test_a_burst_under_the_limit_reads_the_queue_once(broker: Broker) -> None:
    name = await endpoint(broker)
    limit = QueueLimit(trust_for=60)
    for _ in range(5):
        await limit.admit(broker, name, 10)
    assert limit.readings == 1


async def test_a_full_queue_refuses_on_a_fresh_reading(broker: Broker) -> None:
    name = await endpoint(broker)
    await enqueue(broker, name, 2)
    limit = QueueLimit(trust_for=60)
    await limit.admit(broker, name, 3)  # 2 queued: room for one
    await enqueue(broker, name, 1)  # which takes it
    with pytest.raises(QueueFull) as refused:
        await limit.admit(broker, name, 3)  # counted full: read again, and still full
    assert refused.value.headers == {"Retry-After": "1"}
    assert limit.readings == 2


async def test_a_queue_that_drained_meanwhile_refuses_nobody(broker: Broker) -> None:
    name = await endpoint(broker)
    await enqueue(broker, name, 1)
    limit = QueueLimit(trust_for=60)
    await limit.admit(broker, name, 2)  # 1 queued, and this one: counted full
    await enqueue(broker, name, 1)
    puller = Puller(broker, name)
    await puller.open()
    try:
        for _ in range(2):  # the queue drains
            delivery = await puller.next(5)
            assert delivery is not None
            await puller.discard(delivery)
        puller.wire.flush()
    finally:
        await puller.close()
    await limit.admit(broker, name, 2)  # a fresh reading finds room
    assert limit.readings == 2


async def test_callers_arriving_together_share_one_reading(broker: Broker) -> None:
    name = await endpoint(broker)
    limit = QueueLimit(trust_for=0)  # nothing trusted: each caller needs a reading
    await asyncio.gather(*(limit.admit(broker, name, 100) for _ in range(20)))
    assert limit.readings < 20
