"""Claim checks: bodies too large for one NATS message travel through an object store.

A request or reply body over the server's max payload (less room for headers)
is put in the ``berth_bodies`` object store; the message carries its name in
``Berth-Body-Ref`` and an empty payload. A request's object is deleted once the
request is answered; a sync reply's once the API has read it; a job's result
stays as long as the job (the bucket's TTL is the result TTL, a backstop for
everything else).
"""

from __future__ import annotations

import contextlib

from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from broker.connection import Broker
from broker.envelope import Reply
from shared import names
from shared.errors import BrokerUnavailable

__all__ = [
    "HEADER_ROOM",
    "drop_body",
    "ensure_bodies",
    "fits",
    "get_body",
    "put_body",
    "resolve",
]

# Room left in a message for its headers (the forwarded ones can be long).
HEADER_ROOM = 64 * 1024


def fits(broker: Broker, size: int) -> bool:
    return size <= broker.max_payload - HEADER_ROOM


async def ensure_bodies(broker: Broker, ttl: float) -> None:
    try:
        await broker.js.object_store(names.OBJ_BODIES)
    except (BucketNotFoundError, NotFoundError):
        config = ObjectStoreConfig(storage=StorageType.FILE, ttl=ttl, replicas=broker.replicas)
        await broker.js.create_object_store(names.OBJ_BODIES, config=config)


async def put_body(broker: Broker, name: str, data: bytes) -> str:
    store = await broker.js.object_store(names.OBJ_BODIES)
    await store.put(name, data)
    return name


async def get_body(broker: Broker, name: str) -> bytes:
    store = await broker.js.object_store(names.OBJ_BODIES)
    try:
        found = await store.get(name)
    except ObjectNotFoundError as exc:
        raise BrokerUnavailable(f"body {name} is no longer in the object store") from exc
    return found.data or b""


async def drop_body(broker: Broker, name: str) -> None:
    with contextlib.suppress(Exception):  # the TTL removes whatever is left behind
        store = await broker.js.object_store(names.OBJ_BODIES)
        await store.delete(name)


async def resolve(broker: Broker, reply: Reply, *, drop: bool) -> Reply:
    """The reply with its body in hand; ``drop`` deletes a claim-checked one (read once)."""
    if reply.body_ref:
        reply.body = await get_body(broker, reply.body_ref)
        if drop:
            await drop_body(broker, reply.body_ref)
        reply.body_ref = None
    return reply
