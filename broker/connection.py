"""Connecting to NATS, with errors translated into Berth's tree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from broker.wire import Wire
from shared.errors import BrokerUnavailable

__all__ = [
    "BROKER_FAILURES",
    "NATS_ERRORS",
    "Broker",
    "connect",
    "connected",
    "redact",
    "unavailable",
]

log = logging.getLogger(__name__)

# What nats-py raises when NATS is away or slow (a restart, a lost connection, a
# timeout, a JetStream API error): callers outside broker/ catch these by this name,
# without importing nats, and answer them as unavailable().
NATS_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error,)
# Those and Berth's own word for them: NATS away, whichever layer noticed.
BROKER_FAILURES: tuple[type[Exception], ...] = (BrokerUnavailable, *NATS_ERRORS)


def unavailable(exc: Exception) -> BrokerUnavailable:
    """A nats-py failure as Berth's 503: NATS did not do what was asked."""
    return BrokerUnavailable(f"NATS did not answer: {type(exc).__name__}: {exc}".rstrip(": "))


def redact(url: str) -> str:
    """A NATS URL (or several, comma-separated) fit for a log line: users, passwords and
    tokens left out."""
    out = []
    for one in url.split(","):
        scheme, sep, rest = one.rpartition("://")
        out.append(f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else one)
    return ",".join(out)


def servers(url: str) -> list[str]:
    """The URLs of ``url`` (one, or a cluster's nodes separated by commas), each with the
    first one's credentials when it has none of its own."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    first = urls[0] if urls else url
    _, _, rest = first.partition("://")
    creds = rest.partition("@")[0] + "@" if "@" in rest.partition("/")[0] else ""
    out = []
    for one in urls or [url]:
        scheme, sep, rest = one.rpartition("://")
        if creds and "@" not in rest:
            one = f"{scheme}{sep}{creds}{rest}" if sep else f"{creds}{one}"
        out.append(one)
    return out


@dataclass(slots=True)
class Broker:
    """An open NATS connection and its JetStream context.

    The data path (requests, pulls, replies, acks) has a second, lean connection of
    its own (:mod:`broker.wire`), opened on first use.
    """

    nc: Client
    js: JetStreamContext
    timeout: float
    url: str = ""
    name: str = ""
    # Copies JetStream keeps of every stream, bucket and object store Berth makes: 1 on
    # one nats-server, 3 on a three-node cluster (BERTH_NATS_REPLICAS).
    replicas: int = 1
    _kv: dict[str, KeyValue] = field(default_factory=dict)
    _wire: asyncio.Task[Wire] | None = None

    async def wire(self) -> Wire:
        """The data path's connection, shared by every requester and puller of this broker."""
        if self._wire is None:
            self._wire = asyncio.ensure_future(
                Wire.connect(self.url, f"{self.name}-data", timeout=self.timeout)
            )
        try:
            return await asyncio.shield(self._wire)
        except BrokerUnavailable:
            self._wire = None  # the next caller tries again
            raise

    async def kv(self, bucket: str) -> KeyValue:
        """The bucket's handle, looked up once per connection."""
        handle = self._kv.get(bucket)
        if handle is None:
            handle = self._kv[bucket] = await self.js.key_value(bucket)
        return handle

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    async def close(self) -> None:
        if self._wire is not None:
            wire, self._wire = self._wire, None
            if wire.done() and not wire.cancelled() and wire.exception() is None:
                await wire.result().close()
            else:
                wire.cancel()
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already closing or connection lost: nothing left to drain
                await self.nc.close()


async def connect(url: str, name: str, *, timeout: float = 5.0, replicas: int = 1) -> Broker:
    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def on_disconnect() -> None:
        if not nc.is_draining and not nc.is_closed:  # a drop, not our own close
            log.warning("nats: disconnected from %s", redact(url))

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    # nats-py retries even the first connection forever when reconnects are
    # unlimited: bound it, so a wrong URL is an error, not a silent hang.
    nc = Client()
    try:
        async with asyncio.timeout(timeout * 2):
            await nc.connect(
                servers(url),
                name=name,
                connect_timeout=timeout,  # type: ignore[arg-type]  # annotated int; takes seconds
                max_reconnect_attempts=-1,
                # Closing drains subscriptions first; one whose reader has stopped (a pull
                # subscription nobody fetches from any more) would hold it for nats-py's
                # default 30 s. Our readers stop before close: a short bound is enough.
                drain_timeout=2,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
    except Exception as exc:
        raise BrokerUnavailable(f"cannot connect to NATS at {redact(url)}: {exc}") from exc
    return Broker(
        nc=nc,
        js=nc.jetstream(timeout=timeout),
        timeout=timeout,
        url=url,
        name=name,
        replicas=replicas,
    )


@contextlib.asynccontextmanager
async def connected(
    url: str, name: str, *, timeout: float = 5.0, replicas: int = 1
) -> AsyncIterator[Broker]:
    """A connection with Berth's stream, KV and object-store layout in place; drained on exit."""
    from broker.streams import ensure_layout, until_laid_out  # streams imports this module

    broker = await connect(url, name, timeout=timeout, replicas=replicas)
    try:
        await until_laid_out(lambda: ensure_layout(broker), "Berth's streams and buckets")
        yield broker
    finally:
        await broker.close()
