"""What a caller sees of a job: state, timings, queue position and wait, and why it is stuck.

``GET /v1/requests/{id}`` and the callback payload both use :func:`job_view`.
Everything here is read from NATS (the jobs bucket, the endpoint's consumer,
the replicas bucket, the last events), so any API instance answers the same.

The queue position is an estimate: the requests queued ahead at submission,
less those the endpoint's consumer delivered since (a redelivered request is
counted as progress). The wait estimate divides it by the endpoint's ready
slots and their mean service time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from api.context import AppContext
from broker.connection import Broker
from broker.events import last_event
from broker.jetstream import backlog
from broker.jobs import expire_if_due, get_job
from shared.messages import EndpointSpec, JobRecord, JobStatus, ReplicaRecord, ReplicaState

__all__ = ["DeadlineTimers", "job_view", "waiting_for"]

log = logging.getLogger(__name__)

# Added to a deadline timer's delay, so that it rarely fires before the deadline
# (see DeadlineTimers._expire for when it does).
TIMER_SLACK = 0.005
# Replica reasons that say a restarted replica fails its health check.
_HEALTH_WORDS = ("health check",)


class DeadlineTimers:
    """Expire queued jobs at their ``X-Berth-Deadline`` even if nobody pulls or polls them
    (an endpoint with no capacity, say): their callback then goes out on time.

    Timers live in the API process that accepted the job; one lost with that process
    leaves the job to expire when an agent pulls it or someone reads it.
    """

    def __init__(self, broker: Broker):
        self._broker = broker
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, response_id: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - time.time()) + TIMER_SLACK
        loop.call_later(delay, self._fire, response_id)

    def _fire(self, response_id: str) -> None:
        task = asyncio.ensure_future(self._expire(response_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, response_id: str) -> None:
        try:
            job = await get_job(self._broker, response_id)
            if job is None:
                return
            if job.status is JobStatus.PENDING and job.deadline and time.time() < job.deadline:
                # Fired early: uvloop rounds a delay to the millisecond and counts it from
                # the loop's cached clock, so a timer can go off before the wall-clock
                # deadline. Expiring then would find the job not yet due, and nothing
                # else would come back to it.
                self.schedule(response_id, job.deadline)
                return
            await expire_if_due(self._broker, job)
        except Exception as exc:  # NATS away: the pull or the next read expires it
            log.info("deadline of %s: %r", response_id, exc)


def _round(x: float | None) -> float | None:
    return None if x is None else round(max(0.0, x), 3)


def timings(job: JobRecord, now: float) -> dict[str, float | None]:
    """Seconds queued, waiting for a cold start (part of queued), and running."""
    queued_until = job.started_at or job.finished_at or now
    cold = None
    if job.replica_ready_at is not None and job.started_at is not None:
        cold = max(0.0, min(job.replica_ready_at, job.started_at) - job.created_at)
    running = None
    if job.started_at is not None:
        running = (job.finished_at or now) - job.started_at
    return {
        "queued_s": _round(queued_until - job.created_at),
        "cold_start_s": _round(cold),
        "running_s": _round(running),
    }


async def job_view(ctx: AppContext, job: JobRecord) -> dict[str, Any]:
    now = time.time()
    out: dict[str, Any] = {
        "response_id": job.response_id,
        "status": job.status.value,
        "endpoint": job.endpoint,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "replica_id": job.replica_id,
        "deadline": job.deadline,
        "timings": timings(job, now),
    }
    if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        out["response_url"] = f"{ctx.settings.base_url()}/v1/responses/{job.response_id}"
    if job.reason:
        out["reason"] = job.reason
    if job.status is JobStatus.PENDING:
        out.update(await _queue(ctx, job))
    if job.callback is not None:
        out["callback"] = job.callback.model_dump(mode="json")
    if job.traceparent:
        out["trace_id"] = job.traceparent.split("-")[1]
    return out


async def _queue(ctx: AppContext, job: JobRecord) -> dict[str, Any]:
    replicas = [
        r
        for r in ctx.replicas.items.values()
        if r.endpoint == job.endpoint and r.fresh(time.time())
    ]
    position = None
    if job.queued_ahead is not None and job.delivered_mark is not None:
        waiting = await backlog(ctx.broker, job.endpoint)
        if waiting is not None:
            position = max(0, job.queued_ahead - (waiting.delivered - job.delivered_mark))
    out: dict[str, Any] = {"queue_position": position}
    ready = [r for r in replicas if r.state is ReplicaState.READY]
    spec = ctx.endpoints.items.get(job.endpoint)
    service = [r.service_s for r in ready if r.service_s is not None]
    if position is not None and ready and service and spec is not None:
        slots = len(ready) * spec.concurrency_per_replica
        out["estimated_wait_s"] = round((position + 1) * (sum(service) / len(service)) / slots, 3)
    else:
        out["estimated_wait_s"] = None
    if not ready:
        out["waiting_for"] = await _stuck(ctx, job.endpoint, replicas)
    return out


async def _stuck(ctx: AppContext, endpoint: str, replicas: list[ReplicaRecord]) -> dict[str, Any]:
    starting = any(r.state is ReplicaState.STARTING for r in replicas)
    replica_event = await last_event(ctx.broker, "replica", endpoint) if starting else None
    scale_event = None if starting else await last_event(ctx.broker, "scale", endpoint)
    spec = ctx.endpoints.items.get(endpoint)
    return waiting_for(spec, endpoint, replicas, replica_event, scale_event, time.time())


def _type(event: dict[str, Any] | None) -> str:
    return str((event or {}).get("event", {}).get("type", ""))


def _details(event: dict[str, Any] | None) -> dict[str, Any]:
    return dict((event or {}).get("event", {}).get("details", {}))


def waiting_for(
    spec: EndpointSpec | None,
    endpoint: str,
    replicas: list[ReplicaRecord],
    replica_event: dict[str, Any] | None,
    scale_event: dict[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """Why no replica serves the endpoint yet: one ``reason`` code and a message.

    From the endpoint's replica records and its last replica and scale events.
    """
    if spec is not None and spec.disabled:
        return {"reason": "disabled", "message": f"endpoint {endpoint!r} is disabled"}
    failed = [r for r in replicas if r.state is ReplicaState.FAILED]
    restarting = [r for r in replicas if r.state is ReplicaState.STARTING and r.restarts]
    if failed or restarting:
        r = (failed or restarting)[0]
        words = (r.reason or "").lower()
        code = "health_check" if any(w in words for w in _HEALTH_WORDS) else "crash_loop"
        return {"reason": code, "message": r.reason or "the replica keeps failing"}
    starting = [r for r in replicas if r.state is ReplicaState.STARTING]
    if starting:
        if _type(replica_event) in ("image_pull_started", "image_pull_progress"):
            return {
                "reason": "image_pull",
                "message": "pulling the image",
                "details": _details(replica_event),
            }
        since = now - min(r.started_at for r in starting)
        return {"reason": "cold_start", "message": f"a replica is starting ({since:.1f} s so far)"}
    kind = _type(scale_event)
    if kind in ("no_capacity", "start_backoff"):
        reason = _details(scale_event).get("reason") or kind.replace("_", " ")
        code = "no_capacity" if kind == "no_capacity" else "crash_loop"
        return {"reason": code, "message": reason}
    return {"reason": "scheduling", "message": "waiting for the scaler to start a replica"}
