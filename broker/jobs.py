"""Async requests (``X-OctoAI-Async``): job states in KV, responses in a stream.

A job's request travels like a sync one, but its reply subject is
``berth.res.<id>``, which the BERTH_RESULTS stream keeps: the agent publishes the
response there with a JetStream ack before it acks the request, so a response
is never lost between the two (the API may be down meanwhile). The
``berth_jobs`` bucket holds each job's state: ``pending`` when accepted,
``running`` when a replica takes it, ``completed`` (any response of the
model's) or ``failed`` (Berth's own error) at the end. Both keep entries for
``BERTH_RESULT_TTL``.
"""

from __future__ import annotations

import time

from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from broker.connection import Broker
from broker.envelope import Reply
from broker.streams import ensure_stream
from shared import names
from shared.messages import JobRecord, JobStatus

__all__ = ["ensure_results", "get_job", "get_response", "is_job", "put_job", "store_response"]


def is_job(reply_to: str) -> bool:
    return reply_to.startswith(names.RESULT_SUBJECT_PREFIX)


async def ensure_results(broker: Broker, ttl: float) -> None:
    """The results stream and the jobs bucket (the API owns them and sets their TTL)."""
    config = StreamConfig(
        name=names.RESULTS_STREAM,
        subjects=[f"{names.RESULT_SUBJECT_PREFIX}*"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=ttl,
        max_msg_size=-1,
    )
    await ensure_stream(broker, config)
    try:
        await broker.js.key_value(names.KV_JOBS)
    except BucketNotFoundError:
        await broker.js.create_key_value(bucket=names.KV_JOBS, history=1, ttl=ttl)


async def put_job(broker: Broker, job: JobRecord) -> None:
    kv = await broker.kv(names.KV_JOBS)
    await kv.put(job.response_id, job.model_dump_json().encode())


async def get_job(broker: Broker, response_id: str) -> JobRecord | None:
    kv = await broker.kv(names.KV_JOBS)
    try:
        entry = await kv.get(response_id)
    except KeyNotFoundError:
        return None
    return JobRecord.model_validate_json(entry.value) if entry.value else None


async def mark(broker: Broker, response_id: str, **changes: object) -> None:
    """Update a job's state (read, change, write: only its own agent writes it meanwhile)."""
    job = await get_job(broker, response_id)
    if job is not None:
        await put_job(broker, job.model_copy(update=changes))


async def store_response(broker: Broker, subject: str, reply: Reply, replica_id: str) -> None:
    """Keep a job's response (acked by JetStream), then say it is done."""
    await broker.js.publish(subject, reply.body, headers=reply.to_headers())
    response_id = subject.removeprefix(names.RESULT_SUBJECT_PREFIX)
    status = JobStatus.FAILED if reply.error else JobStatus.COMPLETED
    reason = None
    if reply.error:
        reason = reply.body.decode("utf-8", "replace")[:2000]
    await mark(
        broker,
        response_id,
        status=status,
        finished_at=time.time(),
        replica_id=replica_id or None,
        reason=reason,
    )


async def get_response(broker: Broker, response_id: str) -> Reply | None:
    try:
        msg = await broker.js.get_last_msg(names.RESULTS_STREAM, names.result_subject(response_id))
    except NotFoundError:
        return None
    return Reply.from_message(msg.headers, msg.data or b"")
