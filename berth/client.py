"""The CLI's client: the Python SDK's :class:`berth.sdk.Client`, found from ``BERTH_URL`` /
``BERTH_TOKEN`` or what ``berth up`` wrote in the data directory. One client, not two."""

from __future__ import annotations

from berth.sdk import BerthError as ApiError
from berth.sdk import Client

__all__ = ["ApiError", "Client", "from_environment"]


def from_environment(timeout: float | None = 330.0) -> Client:
    try:
        return Client(timeout=timeout)
    except ValueError:
        raise SystemExit(
            "berth: no API found: set BERTH_URL (and BERTH_TOKEN) or run `berth up`"
        ) from None
