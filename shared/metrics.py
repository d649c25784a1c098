"""Berth's Prometheus metrics: one definition each, counted by the process that sees it.

The API serves its own at ``/metrics`` (a token with the ``metrics`` or ``admin`` scope);
the scaler and each agent serve theirs on ``BERTH_METRICS_HOST:BERTH_METRICS_PORT``
(127.0.0.1 by default, off unless a port is set; ``berth up`` sets one). Prometheus
adds the instances up: ``sum by (endpoint) (...)``.

Labels are bounded: ``endpoint`` (endpoints are few, and limited), ``mode``
(sync, async, stream), ``code`` (HTTP status), and small enums for the rest. A
deleted endpoint's gauges are removed.
"""

from __future__ import annotations

import logging

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

__all__ = [
    "CALLBACKS",
    "COLD_STARTS",
    "DECISIONS",
    "DESIRED",
    "IN_FLIGHT",
    "JOBS",
    "QUEUE_LENGTH",
    "QUEUE_REJECTIONS",
    "QUEUE_WAIT",
    "REPLICAS",
    "REPLICA_SECONDS",
    "REQUESTS",
    "REQUEST_SECONDS",
    "RESTARTS",
    "RUNNING",
    "serve",
]

log = logging.getLogger(__name__)

# No `_created` series beside each counter: half the scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STARTUP = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# -- the API -------------------------------------------------------------------------------
REQUESTS = Counter(
    "berth_requests",
    "Data-plane requests the API answered, by endpoint, mode and HTTP status",
    ["endpoint", "mode", "code"],
)
REQUEST_SECONDS = Histogram(
    "berth_request_duration_seconds",
    "Time from a request's arrival at the API to its answer (a job: to its 202)",
    ["endpoint", "mode"],
    buckets=LATENCY,
)
QUEUE_REJECTIONS = Counter(
    "berth_queue_rejections",
    "Requests refused with 429 because the endpoint's queue was at max_queue_length",
    ["endpoint"],
)
QUEUE_LENGTH = Gauge("berth_queue_length", "Requests waiting in the endpoint's queue", ["endpoint"])
IN_FLIGHT = Gauge(
    "berth_in_flight", "Requests a replica has taken and not yet answered", ["endpoint"]
)
REPLICAS = Gauge(
    "berth_replicas",
    "The endpoint's replicas, fleet-wide, by state (starting, ready, busy, failed)",
    ["endpoint", "state"],
)
JOBS = Counter(
    "berth_jobs",
    "Async jobs entering a state (pending at submission, then running and an end state)",
    ["endpoint", "status"],
)
CALLBACKS = Counter(
    "berth_callback_deliveries",
    "Callback delivery attempts by outcome (delivered, retry, failed)",
    ["endpoint", "outcome"],
)

# -- agents --------------------------------------------------------------------------------
QUEUE_WAIT = Histogram(
    "berth_queue_wait_seconds",
    "Time a request waited in the queue: from its publication to an agent taking it",
    ["endpoint"],
    buckets=LATENCY,
)
REPLICA_SECONDS = Histogram(
    "berth_replica_request_duration_seconds",
    "Time a replica took to answer a request (the agent's call to it)",
    ["endpoint"],
    buckets=LATENCY,
)
COLD_STARTS = Histogram(
    "berth_cold_start_seconds",
    "Time from a replica's start to its first passed health check, or to its failure",
    ["endpoint", "outcome"],
    buckets=STARTUP,
)
RESTARTS = Counter("berth_replica_restarts", "Replica restarts after a crash", ["endpoint"])
RUNNING = Gauge("berth_agent_replicas", "Replicas this agent runs, by state", ["endpoint", "state"])

# -- the scaler ----------------------------------------------------------------------------
DECISIONS = Counter(
    "berth_scaler_decisions",
    "Scaling decisions that changed something, by kind (burst, steady, min_replicas, "
    "idle, above_max, steady_down, disabled, outdated, backoff)",
    ["endpoint", "reason"],
)
DESIRED = Gauge(
    "berth_scaler_desired_replicas",
    "Replicas the scaler wants for the endpoint after its last decision",
    ["endpoint"],
)
ACTUAL = Gauge(
    "berth_scaler_actual_replicas",
    "Replicas starting or ready (current config) when the scaler last looked",
    ["endpoint"],
)
__all__ += ["ACTUAL"]


def serve(host: str, port: int | None, what: str) -> None:
    """Serve this process's metrics on ``host:port`` (a thread), unless ``port`` is None."""
    if port is None:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # a taken port costs the metrics, never the process
        log.warning("%s metrics: cannot listen on %s:%d: %s", what, host, port, exc)
        return
    log.info("%s metrics on http://%s:%d/metrics", what, host, port)
