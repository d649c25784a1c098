"""Async requests (``X-OctoAI-Async``): job states in KV, responses in a stream.

A job's request travels like a sync one, but its reply subject is
``berth.res.<id>``, which the BERTH_RESULTS stream keeps: the agent publishes the
response there with a JetStream ack before it acks the request, so a response
is never lost between the two (the API may be down meanwhile). The
``berth_jobs`` bucket holds each job's state:

    pending ──▶ running ──▶ completed | failed
       │           │
       └───────────┴──────▶ cancelled | expired

Every change is a compare-and-set on the entry's revision, so a cancel racing
a replica's answer has exactly one winner: a result that loses is purged, a
cancel that loses changes nothing. Both keep entries for ``BERTH_RESULT_TTL``.

A job with a callback URL also gets one message on ``berth.cb.<id>``, published
*before* its terminal state is written: a crash between the two leaves a
callback that waits for the state, never a state without its callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import (
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)

from broker.bodies import ensure_bodies, resolve
from broker.connection import Broker
from broker.envelope import Reply
from broker.streams import (
    WrongLastRevision,
    dequeue,
    ensure_stream,
    js_publish,
    kv_read,
    kv_write,
)
from shared import names
from shared.messages import JobRecord, JobStatus
from shared.metrics import JOBS

__all__ = [
    "EXPIRED_IN_QUEUE",
    "LIVE",
    "claim_idempotency",
    "create_job",
    "ensure_results",
    "expire_if_due",
    "finish",
    "finish_with",
    "get_job",
    "get_response",
    "is_job",
    "job_id",
    "modify",
    "release_idempotency",
    "request_callback",
    "store_response",
    "transition",
    "watch_result",
]

LIVE = frozenset({JobStatus.PENDING, JobStatus.RUNNING})
EXPIRED_IN_QUEUE = "its deadline passed while it was queued"
_CAS_TRIES = 20


def is_job(reply_to: str) -> bool:
    return reply_to.startswith(names.RESULT_SUBJECT_PREFIX)


def job_id(reply_to: str) -> str:
    return reply_to.removeprefix(names.RESULT_SUBJECT_PREFIX)


async def ensure_results(broker: Broker, ttl: float) -> None:
    """The results and callbacks streams, the jobs and idempotency buckets (the API owns them)."""
    await ensure_stream(
        broker,
        StreamConfig(
            name=names.RESULTS_STREAM,
            subjects=[f"{names.RESULT_SUBJECT_PREFIX}*"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=ttl,
            max_msg_size=-1,
        ),
    )
    await ensure_bodies(broker, ttl)
    await ensure_stream(
        broker,
        StreamConfig(
            name=names.CALLBACKS_STREAM,
            subjects=[f"{names.CALLBACK_SUBJECT_PREFIX}*"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=ttl,
            duplicate_window=120.0,
        ),
    )
    for bucket in (names.KV_JOBS, names.KV_IDEMPOTENCY):
        try:
            await broker.js.key_value(bucket)
        except BucketNotFoundError:
            await broker.js.create_key_value(bucket=bucket, history=1, ttl=ttl)


async def claim_idempotency(broker: Broker, key: str, value: bytes) -> bytes | None:
    """Claim an Idempotency-Key for a new job; the earlier claim's value if it was taken."""
    kv = await broker.kv(names.KV_IDEMPOTENCY)
    try:
        await kv.create(key, value)
        return None
    except KeyWrongLastSequenceError:
        entry = await kv.get(key)
        return entry.value or b"{}"


async def release_idempotency(broker: Broker, key: str) -> None:
    kv = await broker.kv(names.KV_IDEMPOTENCY)
    await kv.delete(key)


async def _read(broker: Broker, response_id: str) -> tuple[JobRecord, int] | None:
    found = await kv_read(broker, names.KV_JOBS, response_id)
    if found is None or not found[0]:
        return None
    return JobRecord.model_validate_json(found[0]), found[1]


async def get_job(broker: Broker, response_id: str) -> JobRecord | None:
    found = await _read(broker, response_id)
    return found[0] if found else None


async def create_job(broker: Broker, job: JobRecord) -> int:
    """Store a new job; its revision (for a first :func:`modify` without a read)."""
    value = job.model_dump_json(exclude_none=True).encode()
    revision = await kv_write(broker, names.KV_JOBS, job.response_id, value, last=0)
    JOBS.labels(job.endpoint, job.status.value).inc()
    return revision


async def modify(
    broker: Broker,
    response_id: str,
    change: Callable[[JobRecord], JobRecord | None],
    *,
    known: tuple[JobRecord, int] | None = None,
) -> JobRecord | None:
    """Apply ``change`` atomically (retried on a concurrent write); None if it declined or no job.

    ``known`` is the job and revision the caller read or wrote last: tried first, without a read.
    """
    for _ in range(_CAS_TRIES):
        found = known or await _read(broker, response_id)
        known = None
        if found is None:
            return None
        job, revision = found
        new = change(job)
        if new is None:
            return None
        value = new.model_dump_json(exclude_none=True).encode()
        try:
            await kv_write(broker, names.KV_JOBS, response_id, value, last=revision)
        except WrongLastRevision:
            continue
        if new.status is not job.status:
            JOBS.labels(new.endpoint, new.status.value).inc()
        return new
    raise RuntimeError(f"job {response_id}: too many concurrent writers")


async def transition(
    broker: Broker, response_id: str, allowed: frozenset[JobStatus], **changes: object
) -> JobRecord | None:
    """Change a job whose status is one of ``allowed``; None if it was in another state."""

    def change(job: JobRecord) -> JobRecord | None:
        return job.model_copy(update=changes) if job.status in allowed else None

    return await modify(broker, response_id, change)


async def request_callback(broker: Broker, job: JobRecord, attempt: int = 0) -> None:
    """Queue the job's callback (deduplicated per job and attempt)."""
    msg_id = job.response_id if not attempt else f"{job.response_id}.{attempt}"
    await js_publish(broker, names.callback_subject(job.response_id), b"", {"Nats-Msg-Id": msg_id})


async def finish(
    broker: Broker,
    response_id: str,
    status: JobStatus,
    *,
    reason: str | None = None,
    replica_id: str | None = None,
) -> JobRecord | None:
    """Move a live job to a terminal state (and queue its callback); None if it had ended already."""
    found = await _read(broker, response_id)
    if found is None or found[0].status.terminal:
        return None
    if found[0].callback is not None:
        await request_callback(broker, found[0])
    changes: dict[str, object] = {"status": status, "finished_at": time.time(), "reason": reason}
    if replica_id:
        changes["replica_id"] = replica_id

    def end(job: JobRecord) -> JobRecord | None:
        return job.model_copy(update=changes) if job.status in LIVE else None

    return await modify(broker, response_id, end, known=found)


async def expire_if_due(broker: Broker, job: JobRecord) -> JobRecord:
    """A queued job past its deadline is expired now (and leaves the queue), not when pulled."""
    if job.status is not JobStatus.PENDING or not job.deadline or time.time() < job.deadline:
        return job
    done = await finish(broker, job.response_id, JobStatus.EXPIRED, reason=EXPIRED_IN_QUEUE)
    if done is None:
        return job
    if job.seq:
        await dequeue(broker, job.seq)
    return done


async def store_response(broker: Broker, subject: str, reply: Reply, replica_id: str) -> None:
    """Keep a job's response (acked by JetStream), then say it is done.

    A job cancelled or expired meanwhile keeps that state, and the response is purged.
    """
    await js_publish(broker, subject, reply.body, reply.to_headers())
    done = await finish_with(broker, job_id(subject), reply)
    if done is None:
        job = await get_job(broker, job_id(subject))
        if job is not None and job.status in (JobStatus.CANCELLED, JobStatus.EXPIRED):
            await broker.js.purge_stream(names.RESULTS_STREAM, subject=subject)


async def finish_with(broker: Broker, response_id: str, reply: Reply) -> JobRecord | None:
    """End a job with the state its (stored) reply means: completed, or failed for Berth's errors."""
    status = JobStatus.FAILED if reply.error else JobStatus.COMPLETED
    reason = reply.body.decode("utf-8", "replace")[:2000] if reply.error else None
    return await finish(broker, response_id, status, reason=reason, replica_id=reply.replica_id)


@contextlib.asynccontextmanager
async def watch_result(broker: Broker, response_id: str) -> AsyncIterator[asyncio.Future[Reply]]:
    """The job's reply as its agent stores it: core NATS sees the stream's publish too."""
    result: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    async def on_result(msg: Msg) -> None:
        if not result.done():
            result.set_result(Reply.from_message(msg.headers, msg.data))

    sub = await broker.nc.subscribe(names.result_subject(response_id), cb=on_result)
    try:
        yield result
    finally:
        await sub.unsubscribe()


async def get_response(broker: Broker, response_id: str) -> Reply | None:
    try:
        msg = await broker.js.get_last_msg(names.RESULTS_STREAM, names.result_subject(response_id))
    except NotFoundError:
        return None
    return await resolve(broker, Reply.from_message(msg.headers, msg.data or b""), drop=False)
