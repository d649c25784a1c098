"""Leadership among scalers: one key in a KV bucket whose entries expire.

The holder renews the key every third of the TTL by compare-and-set on its
revision; followers try to create it as often. A holder that dies stops
renewing, its key expires with the bucket's TTL, and a follower's create
succeeds: takeover within about one TTL. A holder that stops cleanly deletes
the key, and a follower takes over at its next try.
"""

from __future__ import annotations

import contextlib
import logging

from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from broker.connection import Broker
from shared import names

__all__ = ["Lease"]

log = logging.getLogger(__name__)

KEY = "scaler"


class Lease:
    def __init__(self, broker: Broker, holder: str):
        self._broker = broker
        self.holder = holder
        self._revision: int | None = None  # set while we hold it

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def hold(self) -> bool:
        """Take the lease if it is free, or renew it if ours; whether we hold it now."""
        kv = await self._broker.kv(names.KV_LEASES)
        value = self.holder.encode()
        try:
            if self._revision is None:
                self._revision = await kv.create(KEY, value)
            else:
                self._revision = await kv.update(KEY, value, last=self._revision)
        except KeyWrongLastSequenceError:
            if self._revision is not None:
                log.warning("scaler %s lost the lease", self.holder)
            self._revision = None  # another holds it (or took it while we were away)
        except (NotFoundError, OSError, TimeoutError) as exc:
            log.warning("lease: %r", exc)
            self._revision = None  # cannot prove we hold it: act as a follower
        return self.held

    async def release(self) -> None:
        if self._revision is None:
            return
        kv = await self._broker.kv(names.KV_LEASES)
        with contextlib.suppress(Exception):
            await kv.delete(KEY, last=self._revision)
        self._revision = None
