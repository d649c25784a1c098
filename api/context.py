"""What the API's lifespan opens, and the dependency aliases handlers use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.connection import Broker
from broker.publish import Requester
from broker.registry import KvView
from shared.db import Database
from shared.messages import AgentRecord, EndpointHealth, EndpointSpec, ReplicaRecord
from shared.settings import ApiSettings
from shared.stores import SecretStore

if TYPE_CHECKING:
    from api.asset_imports import AssetImports
    from api.auth import Authenticator
    from api.callbacks import WebhookSecrets
    from api.jobs import DeadlineTimers
    from api.metrics import Recorder

__all__ = ["AppContext", "BrokerDep", "ContextDep", "SessionDep", "SettingsDep", "StoreDep"]


@dataclass(slots=True)
class AppContext:
    settings: ApiSettings
    db: Database
    broker: Broker
    requester: Requester
    endpoints: KvView[EndpointSpec]
    replicas: KvView[ReplicaRecord]
    agents: KvView[AgentRecord]
    health: KvView[EndpointHealth]
    auth: Authenticator
    store: SecretStore
    webhooks: WebhookSecrets
    deadlines: DeadlineTimers
    metrics: Recorder
    imports: AssetImports | None = None  # set once the API has started


def get_context(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_context(request).db.session() as session:
        yield session


ContextDep = Annotated[AppContext, Depends(get_context)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]


def _broker(ctx: ContextDep) -> Broker:
    return ctx.broker


def _settings(ctx: ContextDep) -> ApiSettings:
    return ctx.settings


def _store(ctx: ContextDep) -> SecretStore:
    return ctx.store


BrokerDep = Annotated[Broker, Depends(_broker)]
SettingsDep = Annotated[ApiSettings, Depends(_settings)]
StoreDep = Annotated[SecretStore, Depends(_store)]
