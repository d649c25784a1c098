"""What the scaler knows of an endpoint's traffic: arrivals per second, the load its
replicas carry, and whether its queue moves. The loop feeds it at each pass; the
policy reads the estimates from the ``Observation`` the loop builds."""

from __future__ import annotations

from collections import deque

from broker.jetstream import Backlog
from scaler.policy import BURST_WINDOW, STABLE_WINDOW
from shared.messages import ReplicaRecord

__all__ = ["Traffic"]


class Traffic:
    """An endpoint's recent traffic, from what the loop sees at each pass: requests per
    second arriving (its running count of delivered + queued) and replicas kept busy
    (seconds its replicas spent serving, per second), over the burst and stable windows."""

    def __init__(self) -> None:
        self._busy_s = 0.0  # serving seconds counted since the first pass
        self._seen: dict[str, float] = {}  # each replica's busy_s when last counted
        self._blind_until = 0.0  # no load known before this (a replica did not count)
        self._delivered = 0
        self._moved_at: float | None = None  # when the queue last moved, or was empty
        # Per window: (time, arrived, busy seconds) since one at or before its start.
        self._windows = {
            BURST_WINDOW: deque[tuple[float, int, float]](),
            STABLE_WINDOW: deque(),
        }

    def add(self, now: float, backlog: Backlog, replicas: list[ReplicaRecord]) -> None:
        arrived = backlog.delivered + backlog.queued
        if backlog.queued == 0 or backlog.delivered != self._delivered:
            self._moved_at = now  # nothing waits, or the queue moved
        self._delivered = backlog.delivered
        seen = {r.replica_id: r.busy_s for r in replicas if r.busy_s is not None}
        if len(seen) < len(replicas):  # an agent that does not count: the load is unknown
            self._blind_until = now + STABLE_WINDOW
        self._busy_s += sum(max(0.0, b - self._seen.get(rid, b)) for rid, b in seen.items())
        self._seen = seen
        for span, samples in self._windows.items():
            if samples and arrived < samples[-1][1]:
                samples.clear()  # the count went back (a queue re-created): start over
            samples.append((now, arrived, self._busy_s))
            while len(samples) > 1 and samples[1][0] <= now - span:
                samples.popleft()

    def stalled(self, now: float) -> float:
        """Seconds requests have waited without the queue moving (0 while it moves)."""
        return 0.0 if self._moved_at is None else now - self._moved_at

    def _span(self, span: float) -> tuple[float, int, float] | None:
        samples = self._windows[span]
        (t0, n0, b0), (t1, n1, b1) = samples[0], samples[-1]
        return (t1 - t0, n1 - n0, b1 - b0) if t1 - t0 >= span else None

    def rate(self, span: float) -> float | None:
        """Arrivals per second over the last ``span`` seconds; None until watched that long.

        Passes can be sparse (an endpoint at rest is looked at every IDLE_SWEEP seconds):
        what arrived since the last pass before the window is taken to have arrived
        within it, so that a burst after a quiet spell is not diluted by the quiet.
        """
        seen = self._span(span)
        return seen[1] / span if seen else None

    def busy(self, span: float) -> float | None:
        """Replicas' serving seconds per second over the last ``span`` seconds: the
        requests in flight on average (None: not watched that long)."""
        seen = self._span(span)
        if seen is None or self._windows[span][-1][0] < self._blind_until:
            return None
        return seen[2] / seen[0]
