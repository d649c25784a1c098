"""Ships one replica's output to NATS: tails its log file, batches lines, redacts secrets.

Both runtimes write a replica's stdout and stderr to a file on the agent's host
(the process runtime directly, the docker runtime by following the container's
log). The shipper reads what is new every ``interval`` seconds and publishes it
as one message of timestamped lines, so logs outlive the replica, its container
and its agent, and every API instance can serve them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from broker.connection import Broker
from broker.logs import publish_lines

__all__ = ["LogShipper"]

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024
MAX_BATCH_BYTES = 256 * 1024


class LogShipper:
    def __init__(
        self,
        broker: Broker,
        endpoint: str,
        replica_id: str,
        path: Path,
        redact: Callable[[str], str],
        interval: float = 0.25,
    ):
        self._broker = broker
        self._endpoint = endpoint
        self._replica_id = replica_id
        self._path = path
        self._redact = redact
        self._interval = interval
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = b""
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Ship until :meth:`stop`, then ship what is left."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stop.wait()
            try:
                await self._ship(final=self._stop.is_set())
            except Exception as exc:  # a log line is never worth a replica
                log.warning("shipping logs of %s failed: %r", self._replica_id, exc)

    def _read(self) -> bytes:
        try:
            with self._path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read(MAX_BATCH_BYTES)
        except FileNotFoundError:
            return b""
        self._offset += len(data)
        return data

    async def _ship(self, *, final: bool) -> None:
        while True:
            data = self._partial + self._read()
            if not data:
                return
            *complete, self._partial = data.split(b"\n")
            if final and self._partial:
                complete.append(self._partial)
                self._partial = b""
            if len(self._partial) > MAX_LINE:  # a line that never ends is shipped in pieces
                complete.append(self._partial)
                self._partial = b""
            now = time.time()
            lines = [
                (now, self._redact(line[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")))
                for line in complete
            ]
            if lines:
                await publish_lines(self._broker, self._endpoint, self._replica_id, lines)
            if len(data) < MAX_BATCH_BYTES:
                return
