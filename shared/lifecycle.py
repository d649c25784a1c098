"""A job's lifecycle: one pure function from (job, event) to the job after it, or a refusal.

Every change to a job record goes through :func:`advance`; the job store
(:mod:`broker.jobs`) applies its answer with a compare-and-set, so two writers
racing (a cancel and a replica's answer, say) are judged by the same rules and
exactly one wins. No I/O and no clock: events carry their own times.

    status     event                     becomes     otherwise
    pending    Placed (queue sequence)   pending     (any status: the sequence is kept)
    pending    Started (on a replica)    running
    running    Started (delivered again) running
    live       Answered (ok)             completed
    live       Answered (Berth's error)  failed
    live       Cancelled                 cancelled
    live       Expired (deadline passed) expired     refused while not yet due
    ended      CallbackTried             ended       refused without a callback
    ended      CallbackAgain             ended       refused while live or without a callback
    ended      any of the above but Placed —         refused: a job ends once

"live" is pending or running; "ended" any of the four terminal states.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.messages import CallbackAttempt, CallbackState, JobRecord, JobStatus

__all__ = [
    "EXPIRED_IN_QUEUE",
    "KEEP_ATTEMPTS",
    "LIVE",
    "Answered",
    "CallbackAgain",
    "CallbackTried",
    "Cancelled",
    "Event",
    "Expired",
    "Placed",
    "Refusal",
    "Started",
    "advance",
]

LIVE = frozenset({JobStatus.PENDING, JobStatus.RUNNING})
EXPIRED_IN_QUEUE = "its deadline passed while it was queued"
# Callback attempts a job record keeps (the latest ones).
KEEP_ATTEMPTS = 20
# A failure's reason is Berth's words or an error body: kept this long at most.
REASON_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class Placed:
    """The queue took the request: its sequence (to remove it) and what was ahead of it."""

    seq: int
    queued_ahead: int | None = None
    delivered_mark: int | None = None


@dataclass(frozen=True, slots=True)
class Started:
    """A replica took the job."""

    at: float
    replica_id: str
    ready_at: float | None = None


@dataclass(frozen=True, slots=True)
class Answered:
    """The replica's answer is stored: ``error`` when it is Berth's error, not the model's."""

    at: float
    error: bool = False
    reason: str | None = None
    replica_id: str | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    at: float
    reason: str = "cancelled by the caller"


@dataclass(frozen=True, slots=True)
class Expired:
    at: float
    reason: str = EXPIRED_IN_QUEUE


@dataclass(frozen=True, slots=True)
class CallbackTried:
    """One delivery attempt of the job's callback; ``next_at`` when another is due."""

    attempt: CallbackAttempt
    delivered: bool
    given_up: bool = False
    next_at: float | None = None


@dataclass(frozen=True, slots=True)
class CallbackAgain:
    """The caller asked for a finished job's callback again."""


Event = Placed | Started | Answered | Cancelled | Expired | CallbackTried | CallbackAgain


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why ``event`` does not apply to ``job`` (which is left as it is)."""

    job: JobRecord
    reason: str


def advance(job: JobRecord, event: Event) -> JobRecord | Refusal:
    """The job after ``event``, or why it cannot happen."""
    match event:
        case Placed(seq=seq, queued_ahead=ahead, delivered_mark=mark):
            return job.model_copy(
                update={"seq": seq, "queued_ahead": ahead, "delivered_mark": mark}
            )
        case Started(at=at, replica_id=replica_id, ready_at=ready_at):
            if job.status not in LIVE:
                return _ended(job)
            return job.model_copy(
                update={
                    "status": JobStatus.RUNNING,
                    "started_at": at,
                    "replica_id": replica_id,
                    "replica_ready_at": ready_at,
                }
            )
        case Answered(at=at, error=error, reason=reason, replica_id=replica_id):
            status = JobStatus.FAILED if error else JobStatus.COMPLETED
            changes: dict[str, object] = {"reason": reason[:REASON_LIMIT] if reason else None}
            if replica_id:
                changes["replica_id"] = replica_id
            return _end(job, status, at, changes)
        case Cancelled(at=at, reason=reason):
            return _end(job, JobStatus.CANCELLED, at, {"reason": reason})
        case Expired(at=at, reason=reason):
            if job.status in LIVE and (job.deadline is None or at < job.deadline):
                return Refusal(job, "its deadline has not passed")
            return _end(job, JobStatus.EXPIRED, at, {"reason": reason})
        case CallbackTried(
            attempt=attempt, delivered=delivered, given_up=given_up, next_at=next_at
        ):
            cb = job.callback
            if cb is None:
                return Refusal(job, "it has no callback")
            if job.status in LIVE:
                return Refusal(job, "it has not ended: its callback is not due")
            state = CallbackState.DELIVERED if delivered else CallbackState.PENDING
            if given_up and not delivered:
                state = CallbackState.FAILED
            new_cb = cb.model_copy(
                update={
                    "attempts": cb.attempts + 1,
                    "log": [*cb.log, attempt][-KEEP_ATTEMPTS:],
                    "state": state,
                    "delivered_at": attempt.at if delivered else cb.delivered_at,
                    "next_attempt_at": None if delivered or given_up else next_at,
                }
            )
            return job.model_copy(update={"callback": new_cb})
        case CallbackAgain():
            if job.callback is None:
                return Refusal(job, "it has no callback")
            if job.status in LIVE:
                return Refusal(job, "it has not ended: its callback is not due yet")
            cb = job.callback.model_copy(
                update={"state": CallbackState.PENDING, "next_attempt_at": None}
            )
            return job.model_copy(update={"callback": cb})
    raise TypeError(f"not a job event: {event!r}")


def _end(
    job: JobRecord, status: JobStatus, at: float, changes: dict[str, object]
) -> JobRecord | Refusal:
    if job.status not in LIVE:
        return _ended(job)
    return job.model_copy(update={"status": status, "finished_at": at, **changes})


def _ended(job: JobRecord) -> Refusal:
    return Refusal(job, f"it has ended already ({job.status.value})")
