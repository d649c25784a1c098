"""The job lifecycle, table-tested: every event against every status."""

from __future__ import annotations

import pytest

from shared.lifecycle import (
    EXPIRED_IN_QUEUE,
    KEEP_ATTEMPTS,
    Answered,
    CallbackAgain,
    CallbackTried,
    Cancelled,
    Event,
    Expired,
    Placed,
    Refusal,
    Started,
    advance,
)
from shared.messages import CallbackAttempt, CallbackLog, CallbackState, JobRecord, JobStatus

P, R, C, F, X, E = (
    JobStatus.PENDING,
    JobStatus.RUNNING,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.EXPIRED,
)
ENDED = (C, F, X, E)
T0 = 1_000.0
DEADLINE = T0 + 10


def job(status: JobStatus, *, callback: bool = False) -> JobRecord:
    return JobRecord(
        response_id="j",
        endpoint="e",
        status=status,
        created_at=T0,
        deadline=DEADLINE,
        callback=CallbackLog(url="https://example.test/cb") if callback else None,
    )


def tried(
    delivered: bool, *, given_up: bool = False, next_at: float | None = None
) -> CallbackTried:
    attempt = CallbackAttempt(at=T0 + 20, status=200 if delivered else 500)
    return CallbackTried(attempt=attempt, delivered=delivered, given_up=given_up, next_at=next_at)


# (status before, event, status after — or None where the event is refused)
TABLE: list[tuple[JobStatus, Event, JobStatus | None]] = [
    *((s, Placed(seq=7), s) for s in (P, R, *ENDED)),
    (P, Started(at=T0 + 1, replica_id="r1"), R),
    (R, Started(at=T0 + 2, replica_id="r2"), R),  # delivered again, to another replica
    *((s, Started(at=T0 + 1, replica_id="r"), None) for s in ENDED),
    (P, Answered(at=T0 + 3), C),
    (R, Answered(at=T0 + 3), C),
    (R, Answered(at=T0 + 3, error=True, reason="replica_failed"), F),
    *((s, Answered(at=T0 + 3), None) for s in ENDED),
    (P, Cancelled(at=T0 + 1), X),
    (R, Cancelled(at=T0 + 1), X),
    *((s, Cancelled(at=T0 + 1), None) for s in ENDED),
    (P, Expired(at=DEADLINE), E),
    (R, Expired(at=DEADLINE + 1), E),  # delivered again after its deadline
    (P, Expired(at=DEADLINE - 1), None),  # not due yet
    *((s, Expired(at=DEADLINE), None) for s in ENDED),
]


@pytest.mark.parametrize(("before", "event", "after"), TABLE)
def test_advance(before: JobStatus, event: Event, after: JobStatus | None) -> None:
    start = job(before)
    result = advance(start, event)
    if after is None:
        assert isinstance(result, Refusal), result
        assert result.job is start and result.reason
        return
    assert isinstance(result, JobRecord), result
    assert result.status is after
    if after.terminal and not before.terminal:
        assert result.finished_at == event.at  # type: ignore[union-attr]
    assert start.status is before  # the input is never changed


def test_what_each_event_records() -> None:
    placed = advance(job(P), Placed(seq=9, queued_ahead=3, delivered_mark=40))
    assert isinstance(placed, JobRecord)
    assert (placed.seq, placed.queued_ahead, placed.delivered_mark) == (9, 3, 40)

    started = advance(job(P), Started(at=T0 + 1, replica_id="r1", ready_at=T0 + 0.5))
    assert isinstance(started, JobRecord)
    assert (started.started_at, started.replica_id, started.replica_ready_at) == (
        T0 + 1,
        "r1",
        T0 + 0.5,
    )

    failed = advance(started, Answered(at=T0 + 2, error=True, reason="x" * 5000, replica_id="r2"))
    assert isinstance(failed, JobRecord)
    assert failed.replica_id == "r2" and failed.reason == "x" * 2000

    expired = advance(job(P), Expired(at=DEADLINE))
    assert isinstance(expired, JobRecord) and expired.reason == EXPIRED_IN_QUEUE

    cancelled = advance(job(R), Cancelled(at=T0 + 1))
    assert isinstance(cancelled, JobRecord) and cancelled.reason == "cancelled by the caller"
    again = advance(cancelled, Cancelled(at=T0 + 2))
    assert isinstance(again, Refusal) and "cancelled" in again.reason


@pytest.mark.parametrize("status", ENDED)
def test_callback_attempts_are_logged_once_a_job_has_ended(status: JobStatus) -> None:
    ended = job(status, callback=True)
    retry = advance(ended, tried(False, next_at=T0 + 25))
    assert isinstance(retry, JobRecord) and retry.callback is not None
    assert (retry.callback.state, retry.callback.attempts) == (CallbackState.PENDING, 1)
    assert retry.callback.next_attempt_at == T0 + 25

    done = advance(retry, tried(True))
    assert isinstance(done, JobRecord) and done.callback is not None
    assert done.callback.state is CallbackState.DELIVERED
    assert done.callback.delivered_at == T0 + 20 and done.callback.next_attempt_at is None
    assert [a.status for a in done.callback.log] == [500, 200]

    given_up = advance(retry, tried(False, given_up=True, next_at=T0 + 30))
    assert isinstance(given_up, JobRecord) and given_up.callback is not None
    assert given_up.callback.state is CallbackState.FAILED
    assert given_up.callback.next_attempt_at is None

    resent = advance(given_up, CallbackAgain())
    assert isinstance(resent, JobRecord) and resent.callback is not None
    assert resent.callback.state is CallbackState.PENDING
    assert resent.callback.attempts == 2  # the log keeps what happened before


def test_the_callback_log_keeps_the_latest_attempts() -> None:
    current: JobRecord | Refusal = job(C, callback=True)
    for _ in range(KEEP_ATTEMPTS + 5):
        assert isinstance(current, JobRecord)
        current = advance(current, tried(False))
    assert isinstance(current, JobRecord) and current.callback is not None
    assert current.callback.attempts == KEEP_ATTEMPTS + 5
    assert len(current.callback.log) == KEEP_ATTEMPTS


@pytest.mark.parametrize("event", [tried(True), CallbackAgain()])
def test_callbacks_are_refused_while_live_or_absent(event: Event) -> None:
    for start in (job(P, callback=True), job(R, callback=True), job(C)):
        assert isinstance(advance(start, event), Refusal)
