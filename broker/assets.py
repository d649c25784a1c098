"""Asset contents in a JetStream object store, one object per content digest.

An object's name is the hex sha256 of its bytes, so identical content is stored once
however many assets name it. Contents move in and out through files, chunk by chunk
(128 KiB chunks): neither the API nor an agent holds an asset whole in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from broker.connection import Broker
from shared import names
from shared.errors import BrokerUnavailable

__all__ = ["drop_content", "ensure_assets", "fetch_content", "has_content", "store_content"]


async def ensure_assets(broker: Broker) -> None:
    await _store(broker)


async def _store(broker: Broker) -> ObjectStore:
    try:
        return await broker.js.object_store(names.OBJ_ASSETS)
    except (BucketNotFoundError, NotFoundError):
        config = ObjectStoreConfig(
            storage=StorageType.FILE, description="Berth's asset library", replicas=broker.replicas
        )
        return await broker.js.create_object_store(names.OBJ_ASSETS, config=config)


async def has_content(broker: Broker, digest: str) -> bool:
    store = await _store(broker)
    try:
        info = await store.get_info(digest)
    except (ObjectNotFoundError, NotFoundError):
        return False
    return not info.deleted


async def store_content(broker: Broker, digest: str, path: Path) -> bool:
    """Put the file at ``path`` (whose sha256 is ``digest``) unless that content is there
    already; whether it was put."""
    if await has_content(broker, digest):
        return False
    store = await _store(broker)
    with path.open("rb") as f:
        await store.put(digest, f)
    return True


async def fetch_content(
    broker: Broker, digest: str, dest: Path, counted: list[int] | None = None
) -> int:
    """Write the content ``digest`` to ``dest``, checked against its digest; its size.

    The object's chunks are read with an ordered consumer of its chunk subject and each
    is hashed and written as it comes, on the event loop (a quarter of a millisecond a
    128 KiB chunk). nats-py's own reader hands every chunk to an executor, and a thread
    here would too: either runs at half this speed or less, the threads waiting on each
    other for the GIL. ``counted[0]`` follows the bytes written (for progress reports).
    Raises BrokerUnavailable when the store has no such content, stops sending, or gives
    other bytes.
    """
    store = await _store(broker)
    try:
        info = await store.get_info(digest)
    except (ObjectNotFoundError, NotFoundError) as exc:
        raise BrokerUnavailable(f"asset content {digest[:12]} is not in the store") from exc
    if info.deleted or not info.nuid:
        raise BrokerUnavailable(f"asset content {digest[:12]} is not in the store")
    total = info.size or 0
    hasher = hashlib.sha256()
    size = 0
    with dest.open("wb") as f:
        if total:
            sub = await broker.js.subscribe(
                f"$O.{names.OBJ_ASSETS}.C.{info.nuid}", ordered_consumer=True
            )
            try:
                while size < total:
                    try:
                        msg = await sub.next_msg(timeout=broker.timeout)
                    except NatsTimeout as exc:
                        raise BrokerUnavailable(
                            f"asset content {digest[:12]} stopped coming after {size} bytes"
                        ) from exc
                    hasher.update(msg.data)
                    f.write(msg.data)
                    size += len(msg.data)
                    if counted is not None:
                        counted[0] = size
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
    if size != total or hasher.hexdigest() != digest:
        raise BrokerUnavailable(f"asset content {digest[:12]} came back with other bytes")
    return size


async def drop_content(broker: Broker, digest: str) -> None:
    with contextlib.suppress(ObjectNotFoundError, NotFoundError):
        store = await _store(broker)
        await store.delete(digest)
