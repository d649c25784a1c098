"""Checking a callback's Standard Webhooks signature (what Berth signs every delivery with)."""

from __future__ import annotations

from collections.abc import Mapping

from shared.webhooks import WebhookVerificationError, verify

__all__ = ["WebhookVerificationError", "verify_webhook"]


def verify_webhook(
    headers: Mapping[str, str], body: bytes, secret: str, *, now: float | None = None
) -> None:
    """Raise :class:`WebhookVerificationError` unless ``body`` came from Berth signed with
    ``secret`` (``whsec_…``, from ``GET /v1/webhook-secret``) within five minutes.

    ``headers`` in any case, as a web framework hands them over.
    """
    verify(secret, {k.lower(): v for k, v in headers.items()}, body, now=now)
