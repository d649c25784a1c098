"""One HTTP exchange with a replica, errors translated for the pull loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

from broker.envelope import Reply, RequestEnvelope
from workers.http import ReplicaClient

__all__ = ["ReplicaGone", "ReplicaTimeout", "forward", "forward_stream"]

# Hop-by-hop and transport headers are the proxy's own business.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


class ReplicaGone(Exception):
    """The replica closed the connection or could not be reached: it died or is dying."""


class ReplicaTimeout(Exception):
    """The replica did not answer before the request's deadline."""


async def forward(
    client: ReplicaClient, envelope: RequestEnvelope, body: bytes, timeout: float, replica_id: str
) -> Reply:
    target = envelope.path + (f"?{envelope.query}" if envelope.query else "")
    headers = [(k, v) for k, v in envelope.headers if k.lower() not in _HOP]
    try:
        resp = await client.request(envelope.method, target, headers, body, timeout)
    except TimeoutError as exc:
        raise ReplicaTimeout(f"no answer within {timeout:.3g} s") from exc
    except ConnectionError as exc:
        raise ReplicaGone(str(exc)) from exc
    out = [(k, v) for k, v in resp.headers if k.lower() not in _HOP]
    return Reply(status=resp.status, body=resp.body, headers=out, replica_id=replica_id)


async def forward_stream(
    client: ReplicaClient, envelope: RequestEnvelope, body: bytes, timeout: float, replica_id: str
) -> tuple[Reply, AsyncIterator[bytes]]:
    """The replica's head (status and headers, no body) and an iterator over its body chunks."""
    target = envelope.path + (f"?{envelope.query}" if envelope.query else "")
    headers = [(k, v) for k, v in envelope.headers if k.lower() not in _HOP]
    try:
        resp, chunks = await client.stream(envelope.method, target, headers, body, timeout)
    except TimeoutError as exc:
        raise ReplicaTimeout(f"no answer within {timeout:.3g} s") from exc
    except ConnectionError as exc:
        raise ReplicaGone(str(exc)) from exc
    out = [(k, v) for k, v in resp.headers if k.lower() not in _HOP]
    return Reply(status=resp.status, body=b"", headers=out, replica_id=replica_id), chunks
