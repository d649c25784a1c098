"""Live views of KV buckets (endpoint specs, replicas, agents) and writes to them.

A :class:`KvView` watches a bucket and keeps the newest value of every key as a
pydantic model, so readers never make a NATS round trip. Records carry their
own ``updated_at``: a bucket's TTL drops expired entries without telling
watchers, so readers judge staleness themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel, ValidationError

from broker.connection import Broker

__all__ = ["KvView", "delete_key", "put_model", "read_models"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class KvView(Generic[M]):
    def __init__(
        self,
        broker: Broker,
        bucket: str,
        model: type[M],
        on_change: Callable[[str, M | None], None] | None = None,
    ):
        self._broker = broker
        self._bucket = bucket
        self._model = model
        self._on_change = on_change
        self.items: dict[str, M] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        kv = await self._broker.js.key_value(self._bucket)
        watcher = await kv.watchall()
        self._task = asyncio.create_task(self._run(watcher), name=f"kv-view:{self._bucket}")
        async with asyncio.timeout(self._broker.timeout):
            await self._ready.wait()

    async def _run(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # initial values delivered
                    self._ready.set()
                    continue
                if entry.delta == 0:
                    self._ready.set()
                key = entry.key
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self.items.pop(key, None)
                    self._notify(key, None)
                    continue
                try:
                    value = self._model.model_validate_json(entry.value)
                except ValidationError:
                    log.warning("ignoring malformed %s entry %r", self._bucket, key)
                    continue
                self.items[key] = value
                self._notify(key, value)
            # Only stop() ends the watch on purpose; otherwise this view is now frozen.
            log.error(
                "the watch of KV bucket %s ended; its view is no longer updated", self._bucket
            )
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _notify(self, key: str, value: M | None) -> None:
        if self._on_change is not None:
            try:
                self._on_change(key, value)
            except Exception:
                log.exception("kv view callback failed for %s", key)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def put_model(broker: Broker, bucket: str, key: str, value: BaseModel) -> None:
    kv = await broker.kv(bucket)
    await kv.put(key, value.model_dump_json().encode())


async def delete_key(broker: Broker, bucket: str, key: str) -> None:
    kv = await broker.kv(bucket)
    with contextlib.suppress(Exception):
        await kv.delete(key)


async def read_models(broker: Broker, bucket: str, model: type[M]) -> dict[str, M]:
    """Every entry of ``bucket`` read once, as ``model`` (an entry deleted meanwhile, or
    malformed, is left out)."""
    kv = await broker.kv(bucket)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    found: dict[str, M] = {}
    for key in keys:
        with contextlib.suppress(KeyNotFoundError, ValidationError):
            entry = await kv.get(key)
            if entry.value:
                found[key] = model.model_validate_json(entry.value)
    return found
