"""A queued job's deadline timer expires it on time, even when the timer goes off early.

uvloop rounds a timer's delay to the millisecond and counts it from the loop's
cached clock, so a timer can fire before the wall-clock deadline it was set for.
Real NATS (the session's nats-server) holds the jobs.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from api.jobs import DeadlineTimers
from broker.connection import Broker
from broker.jobs import create_job, ensure_results, get_job
from shared.messages import JobRecord, JobStatus


async def pending_job(broker: Broker, deadline: float) -> str:
    await ensure_results(broker, 3600)
    job = JobRecord(
        response_id=f"job-{secrets.token_hex(4)}",
        endpoint="e",
        created_at=time.time(),
        deadline=deadline,
    )
    await create_job(broker, job)
    return job.response_id


async def status_soon(broker: Broker, response_id: str, within: float) -> JobStatus | None:
    """The job's status once it left pending, or None if it had not within ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        job = await get_job(broker, response_id)
        assert job is not None
        if job.status is not JobStatus.PENDING:
            return job.status
        await asyncio.sleep(0.02)
    return None


async def test_a_job_expires_at_its_deadline(broker: Broker) -> None:
    response_id = await pending_job(broker, time.time() + 0.2)
    DeadlineTimers(broker).schedule(response_id, time.time() + 0.2)
    assert await status_soon(broker, response_id, 5) is JobStatus.EXPIRED


async def test_a_timer_that_fires_early_tries_again_at_the_deadline(broker: Broker) -> None:
    response_id = await pending_job(broker, time.time() + 0.3)
    timers = DeadlineTimers(broker)
    await timers._expire(response_id)  # as if its timer went off before the deadline
    assert (await get_job(broker, response_id)).status is JobStatus.PENDING  # type: ignore[union-attr]
    assert await status_soon(broker, response_id, 5) is JobStatus.EXPIRED
