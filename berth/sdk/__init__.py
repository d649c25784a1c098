"""Berth's Python SDK: :class:`Client` (sync) and :class:`AsyncClient` (asyncio) for inference
(sync, async jobs, streams), endpoints, events and logs, secrets, registry credentials,
tokens and jobs; typed answers (:mod:`berth.sdk.models`), one exception tree
(:mod:`berth.sdk.errors`), media helpers and webhook verification.

    from berth import Client
    berth = Client()                       # BERTH_URL / BERTH_TOKEN, or `berth up`'s
    berth.infer("echo", {"text": "hi"})
"""

from berth.sdk.aio import AsyncClient, AsyncJobHandle
from berth.sdk.client import Client, JobHandle
from berth.sdk.errors import (
    BadRequest,
    BerthError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from berth.sdk.media import from_media, to_media
from berth.sdk.models import (
    Accepted,
    Asset,
    Credential,
    Endpoint,
    EndpointSettings,
    Event,
    Example,
    Job,
    JobStatus,
    Replica,
    Response,
    Secret,
    Token,
    TokenCreated,
    Tune,
)
from berth.sdk.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "Accepted",
    "Asset",
    "AsyncClient",
    "AsyncJobHandle",
    "BadRequest",
    "BerthError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Credential",
    "Endpoint",
    "EndpointSettings",
    "Event",
    "Example",
    "Forbidden",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobStatus",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Replica",
    "Response",
    "Secret",
    "ServerError",
    "Timeout",
    "Token",
    "TokenCreated",
    "Tune",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "WebhookVerificationError",
    "from_media",
    "to_media",
    "verify_webhook",
]
