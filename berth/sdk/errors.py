"""One exception tree for every call: the HTTP status, Berth's error code and message,
and the ``X-User-Request-ID`` that finds the request in the API's logs and events."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequest",
    "BerthError",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "JobFailed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "error_for",
]


class BerthError(Exception):
    """An answer of 400 or over (or no answer at all, for :class:`ConnectionFailed`)."""

    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        details: Any = None,
        body: Any = None,
        retry_after: float | None = None,
    ):
        if status is not None:
            self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details
        self.body = body
        self.retry_after = retry_after
        suffix = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{self.status or 'no answer'}: {message}{suffix}")


class BadRequest(BerthError):
    status = 400


class Unauthorized(BerthError):
    status = 401


class Forbidden(BerthError):
    status = 403


class NotFound(BerthError):
    status = 404


class Conflict(BerthError):
    status = 409


class PayloadTooLarge(BerthError):
    status = 413


class Unprocessable(BerthError):
    """422: the fields in :attr:`details` say which input was wrong and why."""

    status = 422


class RateLimited(BerthError):
    """429: the endpoint's queue is full; :attr:`retry_after` says when to try again."""

    status = 429


class ServerError(BerthError):
    status = 500


class Unavailable(ServerError):
    """503: NATS, a replica or the endpoint could not take the request now."""

    status = 503


class Timeout(ServerError):
    """504: no answer within the request's timeout or deadline."""

    status = 504


class JobFailed(BerthError):
    """A job asked for its result ended without one: failed, cancelled or expired
    (:attr:`job` says which, and why)."""

    def __init__(self, job: Any):
        self.job = job
        reason = f": {job.reason}" if getattr(job, "reason", None) else ""
        super().__init__(f"job {job.response_id} {job.status.value}{reason}")


class ConnectionFailed(BerthError):
    """The API could not be reached, or the connection broke before an answer."""


_BY_STATUS: dict[int, type[BerthError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        Unprocessable,
        RateLimited,
        Unavailable,
        Timeout,
    )
}


def error_for(
    status: int, body: Any, request_id: str | None, retry_after: float | None
) -> BerthError:
    """The exception for an error answer: Berth's ``{"error": {code, message, details}}``,
    FastAPI's ``{"detail": ...}``, or whatever a model answered."""
    code = message = details = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code, message, details = error.get("code"), error.get("message"), error.get("details")
        elif "detail" in body:
            details = body["detail"]
            message = details if isinstance(details, str) else "invalid request"
    if message is None:
        message = str(body)[:500] if body not in (None, "") else f"HTTP {status}"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else BerthError)
    return cls(
        str(message),
        status=status,
        code=code,
        request_id=request_id,
        details=details,
        body=body,
        retry_after=retry_after,
    )
