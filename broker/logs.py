"""Replica logs on ``berth.log.<endpoint>.<replica>``, kept by the BERTH_LOGS stream.

An agent ships each replica's output in batches of timestamped lines (see
workers/logship.py); the API reads them back by time and follows them live, in
OctoAI's shape: ``{timestamp, replica_id, data}``. Lines are redacted of the
replica's secret values before they are published.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from broker import history
from broker.connection import Broker
from shared import names

__all__ = ["follow_logs", "publish_lines", "read_logs"]


async def publish_lines(
    broker: Broker, endpoint: str, replica_id: str, lines: list[tuple[float, str]]
) -> None:
    payload = {"replica_id": replica_id, "lines": lines}
    await broker.nc.publish(names.log_subject(endpoint, replica_id), orjson.dumps(payload))


def _unpack(data: bytes) -> list[dict[str, Any]]:
    batch = orjson.loads(data)
    rid = batch["replica_id"]
    return [{"timestamp": ts, "replica_id": rid, "data": text} for ts, text in batch["lines"]]


async def read_logs(
    broker: Broker,
    endpoint: str,
    *,
    replica_id: str | None = None,
    begin: float | None = None,
    end: float | None = None,
    max_lines: int = 100,
) -> list[dict[str, Any]]:
    """The newest ``max_lines`` lines between ``begin`` and ``end`` (unix times)."""
    return await history.read(
        broker,
        names.LOGS_STREAM,
        names.log_subject(endpoint, replica_id or "*"),
        _unpack,
        begin=begin,
        end=end,
        max_items=max_lines,
    )


def follow_logs(
    broker: Broker, endpoint: str, *, replica_id: str | None = None, begin: float | None = None
) -> AsyncIterator[dict[str, Any]]:
    return history.follow(
        broker,
        names.LOGS_STREAM,
        names.log_subject(endpoint, replica_id or "*"),
        _unpack,
        begin=begin,
    )
