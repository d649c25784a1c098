"""Standard Webhooks signatures (https://www.standardwebhooks.com), both ends.

A secret is ``whsec_`` + base64 of 32 random bytes. A delivery carries
``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature``:
space-separated ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``, one
per secret in force (two while a rotated secret's grace period lasts).
:func:`verify` is what a receiver runs; the Python SDK re-exports it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

__all__ = ["SECRET_PREFIX", "WebhookVerificationError", "new_secret", "sign", "verify"]

SECRET_PREFIX = "whsec_"
TOLERANCE = 5 * 60


class WebhookVerificationError(Exception):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def _signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(_key(secret), signed, hashlib.sha256)).decode()


def sign(secrets_in_force: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one delivery, signed with every secret in force."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            _signature(s, msg_id, timestamp, body) for s in secrets_in_force
        ),
    }


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None) -> None:
    """Raise :class:`WebhookVerificationError` unless ``body`` was signed with ``secret``.

    ``headers`` must have lower-case names. Timestamps more than five minutes
    away from ``now`` are refused (replays).
    """
    try:
        msg_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        given = headers["webhook-signature"].split()
    except (KeyError, ValueError) as exc:
        raise WebhookVerificationError("missing or malformed webhook headers") from exc
    if abs((now if now is not None else time.time()) - timestamp) > TOLERANCE:
        raise WebhookVerificationError("timestamp outside the tolerance")
    expected = _signature(secret, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, sig) for sig in given):
        raise WebhookVerificationError("no matching signature")
