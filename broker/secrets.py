"""Handing a replica its secrets: the agent asks the API, the API answers sealed.

The request carries the agent's token, the endpoint's name and a fresh X25519
public key; the answer is sealed for that key (:mod:`shared.sealed`). Secret
values are never published to a stream or a KV bucket, so JetStream keeps no
copy of them; only the API talks to the secret store.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from broker.connection import Broker
from shared import names
from shared.errors import BerthError, ReplicaFailed
from shared.sealed import Opener, SealError, seal

__all__ = ["ReplicaSecrets", "fetch_replica_secrets", "serve_replica_secrets"]

log = logging.getLogger(__name__)

# What the API answers: the values, or raises a BerthError whose message says why not.
Resolver = Callable[[str | None, str], Awaitable[dict[str, Any]]]


class ReplicaSecrets:
    """What one replica gets: environment variables and its registry credential."""

    __slots__ = ("env", "registry")

    def __init__(self, env: dict[str, str], registry: dict[str, str] | None):
        self.env = env
        self.registry = registry

    def __repr__(self) -> str:
        return f"ReplicaSecrets(keys={sorted(self.env)}, registry={self.registry is not None})"

    def values(self) -> list[str]:
        """Every secret value, for redaction."""
        found = list(self.env.values())
        if self.registry:
            found.append(self.registry.get("password", ""))
        return [v for v in found if v]


async def serve_replica_secrets(broker: Broker, resolve: Resolver) -> Any:
    """Answer agents' requests (one queue group across API instances); returns the subscription."""

    async def on_request(msg: Msg) -> None:
        try:
            request = orjson.loads(msg.data)
            public_key = str(request["public_key"])
            payload = await resolve(request.get("token"), str(request["endpoint"]))
            answer: dict[str, Any] = {"ok": True, "sealed": seal(public_key, orjson.dumps(payload))}
        except BerthError as exc:
            answer = {"ok": False, "error": exc.message}
        except (ValueError, KeyError, TypeError, SealError) as exc:
            answer = {"ok": False, "error": f"bad request: {type(exc).__name__}"}
        except Exception:
            log.exception("replica secrets request failed")
            answer = {"ok": False, "error": "internal error in the API; see its log"}
        if msg.reply:
            await msg.respond(orjson.dumps(answer))

    return await broker.nc.subscribe(
        names.REPLICA_SECRETS_SUBJECT, queue=names.API_QUEUE_GROUP, cb=on_request
    )


async def fetch_replica_secrets(
    broker: Broker, token: str | None, endpoint: str, timeout: float
) -> ReplicaSecrets:
    """The endpoint's secrets for one of its replicas; ReplicaFailed saying why if refused."""
    opener = Opener()
    request = orjson.dumps({"token": token, "endpoint": endpoint, "public_key": opener.public_key})
    try:
        msg = await broker.nc.request(names.REPLICA_SECRETS_SUBJECT, request, timeout=timeout)
    except (TimeoutError, NatsTimeout, NoRespondersError) as exc:
        raise ReplicaFailed(
            f"no API answered the request for the replica's secrets ({type(exc).__name__})"
        ) from exc
    answer = orjson.loads(msg.data)
    if not answer.get("ok"):
        raise ReplicaFailed(f"secrets refused: {answer.get('error')}")
    try:
        payload = orjson.loads(opener.open(answer["sealed"]))
    except (KeyError, SealError) as exc:
        raise ReplicaFailed(f"the secrets answer could not be opened: {exc}") from exc
    return ReplicaSecrets(env=dict(payload.get("env") or {}), registry=payload.get("registry"))
