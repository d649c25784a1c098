"""What the console charts: each endpoint's requests, latency, queue and replicas over the
last hour, as this API instance saw them.

The data plane calls :meth:`Recorder.observe` once per answered request (a dict
lookup and an append: nothing on the request path waits for it). Every
``metrics_interval`` seconds :meth:`Recorder.sample` closes the open bucket of each
endpoint into a point, with the queue and replica counts read at that moment, and
keeps an hour of points. The numbers live in this process's memory: with several
API instances each charts its own share of requests (queue and replicas are
fleet-wide).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.connection import BROKER_FAILURES
from broker.jetstream import backlog
from shared.messages import ReplicaRecord, ReplicaState
from shared.metrics import IN_FLIGHT, QUEUE_LENGTH, REPLICAS, REQUEST_SECONDS, REQUESTS

__all__ = ["Recorder", "replica_counts"]

log = logging.getLogger(__name__)

HOUR = 3600.0
# Latencies kept per bucket for its percentiles; beyond it, every other one is dropped.
_LATENCY_SAMPLE = 2048


@dataclass(slots=True)
class _Bucket:
    requests: int = 0
    errors: int = 0  # answers of 500 and over (Berth's or the model's)
    latencies: list[float] = field(default_factory=list)

    def add(self, status: int, seconds: float) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        if len(self.latencies) < _LATENCY_SAMPLE:
            self.latencies.append(seconds)
        elif self.requests % 2:
            self.latencies[self.requests % _LATENCY_SAMPLE] = seconds


_CODES = {code: str(code) for code in range(100, 600)}


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def replica_counts(records: list[ReplicaRecord], now: float) -> dict[str, int]:
    """Fresh replicas by what they do: starting, ready and idle, busy (something in flight)."""
    counts = {"starting": 0, "ready": 0, "busy": 0, "failed": 0}
    for r in records:
        if not r.fresh(now):
            continue
        if r.state is ReplicaState.STARTING:
            counts["starting"] += 1
        elif r.state is ReplicaState.READY:
            counts["busy" if r.in_flight else "ready"] += 1
        elif r.state is ReplicaState.FAILED:
            counts["failed"] += 1
    return counts


class Recorder:
    def __init__(self, interval: float, known: Callable[[str], bool]):
        self.interval = interval
        self._known = known
        self._open: dict[str, _Bucket] = {}
        self._points: dict[str, deque[dict[str, Any]]] = {}
        self._keep = max(1, int(HOUR / interval))
        self._task: asyncio.Task[None] | None = None
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, path: str, status: int, seconds: float, mode: str) -> None:
        """One answered data-plane request (``/e/<endpoint>/...``), here and for Prometheus."""
        name = path[3:].partition("/")[0]
        bucket = self._open.get(name)
        if bucket is None:
            if not self._known(name):
                return  # unknown names never grow this table, nor Prometheus's labels
            bucket = self._open[name] = _Bucket()
        bucket.add(status, seconds)
        # Each series looked up once: a label lookup costs more than the update.
        series = self._series.get((name, mode, status))
        if series is None:
            code = _CODES.get(status) or str(status)
            series = REQUESTS.labels(name, mode, code), REQUEST_SECONDS.labels(name, mode)
            self._series[(name, mode, status)] = series
        series[0].inc()
        series[1].observe(seconds)

    def points(self, name: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [p for p in self._points.get(name, ()) if p["t"] >= since]

    def forget(self, name: str) -> None:
        self._open.pop(name, None)
        self._points.pop(name, None)
        for key in [k for k in self._series if k[0] == name]:
            del self._series[key]
        for gauge in (QUEUE_LENGTH, IN_FLIGHT):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        for state in ("starting", "ready", "busy", "failed"):
            with contextlib.suppress(KeyError):
                REPLICAS.remove(name, state)

    async def sample(
        self, endpoints: list[str], replicas: list[ReplicaRecord], broker: Any
    ) -> None:
        """Close every endpoint's bucket into a point stamped now."""
        now = time.time()
        by_endpoint: dict[str, list[ReplicaRecord]] = {}
        for r in replicas:
            by_endpoint.setdefault(r.endpoint, []).append(r)
        for name in list(self._points):
            if name not in endpoints:
                self.forget(name)
        for name in endpoints:
            bucket = self._open.pop(name, None) or _Bucket()
            ordered = sorted(bucket.latencies)
            p50, p95 = _percentile(ordered, 0.5), _percentile(ordered, 0.95)
            queued = in_flight = None
            with contextlib.suppress(*BROKER_FAILURES):
                found = await backlog(broker, name)
                if found is not None:
                    queued, in_flight = found.queued, found.in_flight
            counts = replica_counts(by_endpoint.get(name, []), now)
            point = {
                "t": round(now, 3),
                "requests": bucket.requests,
                "errors": bucket.errors,
                "p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
                "p95_ms": round(p95 * 1000, 2) if p95 is not None else None,
                "queued": queued,
                "in_flight": in_flight,
                "replicas": counts,
            }
            self._points.setdefault(name, deque(maxlen=self._keep)).append(point)
            # Prometheus's gauges are these same figures (the console's charts read them).
            if queued is not None and in_flight is not None:
                QUEUE_LENGTH.labels(name).set(queued)
                IN_FLIGHT.labels(name).set(in_flight)
            for state, count in counts.items():
                REPLICAS.labels(name, state).set(count)

    def start(self, read: Callable[[], tuple[list[str], list[ReplicaRecord], Any]]) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    await self.sample(*read())
                except Exception:  # a chart gap, never a dead sampler
                    log.exception("metrics sample failed")

        self._task = asyncio.create_task(loop(), name="metrics-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
