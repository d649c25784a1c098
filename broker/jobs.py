"""Async requests (``X-OctoAI-Async``): job states in KV, responses in a stream.

A job's request travels like a sync one, but its reply subject is
``berth.res.<id>``, which the BERTH_RESULTS stream keeps: the agent publishes the
response there with a JetStream ack before it acks the request, so a response
is never lost between the two (the API may be down meanwhile). The
``berth_jobs`` bucket holds each job's state:

    pending ──▶ running ──▶ completed | failed
       │           │
       └───────────┴──────▶ cancelled | expired

:func:`apply` is the only writer of a job after :func:`create_job`: it asks
:func:`shared.lifecycle.advance` what an event makes of the job and writes that
with a compare-and-set on the entry's revision, so a cancel racing a replica's
answer has exactly one winner: a result that loses is purged, a cancel that
loses changes nothing. Both keep entries for ``BERTH_RESULT_TTL``.

A job with a callback URL also gets one message on ``berth.cb.<id>``, published
*before* its terminal state is written: a crash between the two leaves a
callback that waits for the state, never a state without its callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from pydantic import ValidationError

from broker.bodies import ensure_bodies, resolve
from broker.connection import Broker
from broker.envelope import Reply
from broker.jetstream import WrongLastRevision, js_publish, kv_read, kv_write
from broker.streams import dequeue, ensure_stream
from shared import names
from shared.errors import BrokerUnavailable
from shared.lifecycle import Answered, Event, Expired, Refusal, advance
from shared.messages import JobRecord, JobStatus
from shared.metrics import JOBS

log = logging.getLogger(__name__)

__all__ = [
    "answered",
    "apply",
    "claim_idempotency",
    "create_job",
    "ensure_results",
    "expire_if_due",
    "get_job",
    "get_response",
    "is_job",
    "job_id",
    "recent_jobs",
    "release_idempotency",
    "request_callback",
    "store_response",
    "watch_result",
]

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
            num_replicas=broker.replicas,
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
            num_replicas=broker.replicas,
        ),
    )
    for bucket in (names.KV_JOBS, names.KV_IDEMPOTENCY):
        try:
            await broker.js.key_value(bucket)
        except BucketNotFoundError:
            await broker.js.create_key_value(
                bucket=bucket, history=1, ttl=ttl, replicas=broker.replicas
            )


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
    try:
        return JobRecord.model_validate_json(found[0]), found[1]
    except ValidationError as exc:  # a newer Berth's format, or not a job: an outage here
        raise BrokerUnavailable(
            f"job {response_id}'s record cannot be read by this Berth: {exc.errors()[0]['msg']}"
        ) from exc


async def get_job(broker: Broker, response_id: str) -> JobRecord | None:
    found = await _read(broker, response_id)
    return found[0] if found else None


async def create_job(broker: Broker, job: JobRecord) -> int:
    """Store a new job; its revision (for a first :func:`modify` without a read)."""
    value = job.model_dump_json(exclude_none=True).encode()
    revision = await kv_write(broker, names.KV_JOBS, job.response_id, value, last=0)
    JOBS.labels(job.endpoint, job.status.value).inc()
    return revision


async def apply(
    broker: Broker,
    response_id: str,
    event: Event,
    *,
    known: tuple[JobRecord, int] | None = None,
) -> JobRecord | Refusal | None:
    """The job after ``event`` (:func:`shared.lifecycle.advance`), written by compare-and-set
    and tried again on a concurrent write; its refusal, or None if there is no such job.

    A job with a callback that ends here has its callback queued before its end is written:
    a crash between the two leaves a callback that waits for the state, never a state
    without its callback. ``known`` is the job and revision the caller read or wrote last:
    tried first, without a read.
    """
    for _ in range(_CAS_TRIES):
        found = known or await _read(broker, response_id)
        known = None
        if found is None:
            return None
        job, revision = found
        new = advance(job, event)
        if isinstance(new, Refusal):
            return new
        ends = new.status.terminal and not job.status.terminal
        if ends and new.callback is not None:
            await request_callback(broker, new)
        value = new.model_dump_json(exclude_none=True).encode()
        try:
            await kv_write(broker, names.KV_JOBS, response_id, value, last=revision)
        except WrongLastRevision:
            continue
        if new.status is not job.status:
            JOBS.labels(new.endpoint, new.status.value).inc()
        return new
    raise BrokerUnavailable(f"job {response_id}: too many concurrent writers")


async def request_callback(broker: Broker, job: JobRecord, attempt: int = 0) -> None:
    """Queue the job's callback (deduplicated per job and attempt)."""
    msg_id = job.response_id if not attempt else f"{job.response_id}.{attempt}"
    await js_publish(broker, names.callback_subject(job.response_id), b"", {"Nats-Msg-Id": msg_id})


async def expire_if_due(broker: Broker, job: JobRecord) -> JobRecord:
    """A queued job past its deadline is expired now (and leaves the queue), not when pulled."""
    if job.status is not JobStatus.PENDING or not job.deadline or time.time() < job.deadline:
        return job
    done = await apply(broker, job.response_id, Expired(at=time.time()))
    if not isinstance(done, JobRecord):
        return job
    if job.seq:
        await dequeue(broker, job.seq)
    return done


async def store_response(broker: Broker, subject: str, reply: Reply) -> None:
    """Keep a job's response (acked by JetStream), then say it is done.

    A job cancelled or expired meanwhile keeps that state, and the response is purged.
    """
    await js_publish(broker, subject, reply.body, reply.to_headers())
    done = await apply(broker, job_id(subject), answered(reply))
    if isinstance(done, Refusal) and done.job.status in (JobStatus.CANCELLED, JobStatus.EXPIRED):
        await broker.js.purge_stream(names.RESULTS_STREAM, subject=subject)


def answered(reply: Reply) -> Answered:
    """The event a (stored) reply means: completed, or failed for Berth's own errors."""
    reason = reply.body.decode("utf-8", "replace") if reply.error else None
    return Answered(
        at=time.time(), error=bool(reply.error), reason=reason, replica_id=reply.replica_id
    )


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


async def recent_jobs(broker: Broker, scan: int) -> list[JobRecord]:
    """The jobs among the jobs bucket's last ``scan`` changes (each job's newest state, once)."""
    stream = f"KV_{names.KV_JOBS}"
    info = await broker.js.stream_info(stream)
    if not info.state.messages:
        return []
    start = max(info.state.first_seq, info.state.last_seq - scan + 1)
    sub = await broker.js.pull_subscribe(
        f"$KV.{names.KV_JOBS}.>",
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
        ),
    )
    found: dict[str, JobRecord] = {}
    try:
        while True:
            try:
                batch = await sub.fetch(256, timeout=broker.timeout)
            except NatsTimeout:
                break
            for msg in batch:
                key = msg.subject.rpartition(".")[2]
                if msg.headers and msg.headers.get("KV-Operation") in ("DEL", "PURGE"):
                    found.pop(key, None)
                elif msg.data:
                    try:
                        found[key] = JobRecord.model_validate_json(msg.data)
                    except ValidationError as exc:
                        # One unreadable record (a newer format, or not a job) is left
                        # out of the listing, not a failure of it.
                        found.pop(key, None)
                        log.warning("job record %s is unreadable and left out: %s", key, exc)
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return list(found.values())
