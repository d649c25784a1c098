"""The API's answer to an agent asking for a replica's secrets (see broker/secrets.py).

Only a token with the ``agent`` or ``admin`` scope gets an answer, and only the
values that the endpoint itself names: its ``container_secrets`` and its
``registry_credential``. Errors name keys, never values.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from api.context import AppContext
from shared.errors import BerthError, Forbidden, NotFound, ReplicaFailed
from shared.models import Endpoint
from shared.stores import Kind

__all__ = ["replica_secrets"]


async def replica_secrets(ctx: AppContext, token: str | None, endpoint: str) -> dict[str, Any]:
    try:
        principal = await ctx.auth.authenticate(token)
    except BerthError as exc:
        raise Forbidden(
            f"the agent's token was refused ({exc.message}); set BERTH_AGENT_TOKEN"
        ) from exc
    if not principal.may_fetch_secrets():
        raise Forbidden("the agent's token lacks the agent scope")
    async with ctx.db.session() as session:
        ep = (await session.exec(select(Endpoint).where(Endpoint.name == endpoint))).first()
    if ep is None:
        raise NotFound(f"endpoint {endpoint!r} does not exist")
    env: dict[str, str] = {}
    for key in ep.container_secrets:
        item = await ctx.store.get(Kind.SECRET, key)
        if item is None:
            raise ReplicaFailed(f"secret {key!r} named in container_secrets does not exist")
        env[key] = item.data["value"]
    registry = None
    if ep.registry_credential:
        item = await ctx.store.get(Kind.REGISTRY, ep.registry_credential)
        if item is None:
            raise ReplicaFailed(f"registry credential {ep.registry_credential!r} does not exist")
        registry = {"username": item.data["username"], "password": item.data["password"]}
    return {"env": env, "registry": registry, "secrets_generation": ep.secrets_generation}
