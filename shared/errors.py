"""Berth's one error tree.

Every error a caller can see is a :class:`BerthError` with an HTTP status and a
stable machine-readable ``code``. Adapters (nats, httpx, sqlalchemy, ...) catch
their library's exceptions at the edge and raise one of these ``from`` it; the
API has a single handler that turns them into JSON.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "BerthError",
    "BodyTooLarge",
    "BrokerUnavailable",
    "Conflict",
    "DatabaseUnavailable",
    "EndpointDisabled",
    "Forbidden",
    "HeadersTooLarge",
    "InvalidRequest",
    "NotFound",
    "QueueFull",
    "ReplicaFailed",
    "TooManyEndpoints",
    "UpstreamTimeout",
]


class BerthError(Exception):
    """Base of every error Berth reports to a caller."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class InvalidRequest(BerthError):
    status_code = 422
    code = "invalid_request"


class AuthError(BerthError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "missing or invalid bearer token", **kw: Any):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"}, **kw)


class Forbidden(BerthError):
    status_code = 403
    code = "forbidden"


class NotFound(BerthError):
    status_code = 404
    code = "not_found"


class Conflict(BerthError):
    status_code = 409
    code = "conflict"


class TooManyEndpoints(Conflict):
    code = "too_many_endpoints"


class BodyTooLarge(BerthError):
    status_code = 413
    code = "body_too_large"


class HeadersTooLarge(BerthError):
    """The request's headers do not fit the queue's message header block (RFC 6585)."""

    status_code = 431
    code = "request_headers_too_large"


class QueueFull(BerthError):
    status_code = 429
    code = "queue_full"


class EndpointDisabled(BerthError):
    status_code = 503
    code = "endpoint_disabled"


class ReplicaFailed(BerthError):
    """No replica could serve the request: it failed to start or crashed for good."""

    status_code = 503
    code = "replica_failed"


class BrokerUnavailable(BerthError):
    status_code = 503
    code = "broker_unavailable"


class DatabaseUnavailable(BerthError):
    """The database did not answer (down, restarting, unreachable): try again shortly."""

    status_code = 503
    code = "database_unavailable"

    def __init__(self, message: str, **kw: Any):
        kw.setdefault("headers", {"Retry-After": "2"})
        super().__init__(message, **kw)


class UpstreamTimeout(BerthError):
    status_code = 504
    code = "timeout"
