"""One HTTP exchange with a replica, errors translated for the pull loop."""

from __future__ import annotations

import httpx

from broker.envelope import Reply, RequestEnvelope

__all__ = ["ReplicaGone", "ReplicaTimeout", "forward"]

# Hop-by-hop and transport headers are the proxy's own business.
_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "trailers", "transfer-encoding", "upgrade", "content-length", "host"}
)


class ReplicaGone(Exception):
    """The replica closed the connection or could not be reached: it died or is dying."""


class ReplicaTimeout(Exception):
    """The replica did not answer before the request's deadline."""


async def forward(
    client: httpx.AsyncClient, envelope: RequestEnvelope, body: bytes, timeout: float, replica_id: str
) -> Reply:
    url = envelope.path + (f"?{envelope.query}" if envelope.query else "")
    headers = [(k, v) for k, v in envelope.headers if k.lower() not in _HOP]
    try:
        resp = await client.request(
            envelope.method, url, content=body, headers=headers, timeout=timeout
        )
    except httpx.TimeoutException as exc:
        raise ReplicaTimeout(str(exc) or "timed out") from exc
    except httpx.TransportError as exc:
        raise ReplicaGone(f"{type(exc).__name__}: {exc}") from exc
    out = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in _HOP]
    return Reply(status=resp.status_code, body=resp.content, headers=out, replica_id=replica_id)
