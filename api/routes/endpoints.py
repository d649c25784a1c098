"""Control plane for endpoints, with OctoAI's paths and field names."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, status
from pydantic import ValidationError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.auth import AdminDep
from api.context import AppContext, ContextDep, SessionDep
from api.examples import catalog
from api.openapi import errors
from api.routes.assets import lookup_asset
from broker.artifacts import ArchiveLimits, model_exists, pack_dir, store_model
from broker.events import publish_event
from broker.jetstream import Backlog, backlog
from broker.registry import delete_key, put_model
from broker.streams import delete_endpoint_consumer, ensure_endpoint_consumer
from shared import names
from shared.errors import Conflict, InvalidRequest, NotFound, TooManyEndpoints
from shared.messages import AssetRef, EndpointSpec, ReplicaRecord, ReplicaState
from shared.models import (
    AssetStatus,
    Endpoint,
    EndpointCreate,
    EndpointPublic,
    EndpointState,
    EndpointUpdate,
    ReplicaPublic,
    Visibility,
    check_endpoint_config,
)
from shared.stores import Kind, SecretStore
from shared.stores.base import CREDENTIAL_KEY_RE, SECRET_KEY_RE

router = APIRouter(prefix="/v1", tags=["endpoints"], dependencies=[AdminDep])

_STATUS = {
    ReplicaState.STARTING: "pending",
    ReplicaState.READY: "running",
    ReplicaState.STOPPING: "running",
    ReplicaState.FAILED: "failed",
}


def to_spec(ep: Endpoint) -> EndpointSpec:
    return EndpointSpec(
        name=ep.name,
        model_id=ep.model_id,
        image_url=ep.image_url,
        port=ep.port,
        health_check_path=ep.health_check_path,
        min_replicas=ep.min_replicas,
        max_replicas=ep.max_replicas,
        scale_to_zero=ep.scale_to_zero,
        concurrency_per_replica=ep.concurrency_per_replica,
        request_timeout=ep.request_timeout,
        env_overrides=ep.env_overrides,
        instance_type=ep.instance_type,
        container_secrets=ep.container_secrets,
        registry_credential=ep.registry_credential,
        secrets_generation=ep.secrets_generation,
        public=ep.visibility == Visibility.PUBLIC,
        disabled=ep.endpoint_state == EndpointState.DISABLED,
        max_queue_length=ep.max_queue_length,
        sync_wait=ep.sync_wait,
        assets=[AssetRef.model_validate(ref) for ref in ep.asset_refs or ()],
        revision=ep.revision,
        incarnation=f"{ep.id}-{ep.created_at!r}",
    )


def replica_public(record: ReplicaRecord, now: float) -> ReplicaPublic:
    ready = record.state is ReplicaState.READY and record.ready_at is not None
    return ReplicaPublic(
        endpoint_name=record.endpoint,
        replica_id=record.replica_id,
        status=_STATUS.get(record.state, "unknown"),  # type: ignore[arg-type]
        restarts=record.restarts,
        age=int(now - record.ready_at) if ready and record.ready_at else -1,
    )


def to_public(ctx: AppContext, ep: Endpoint, backlog: Backlog | None = None) -> EndpointPublic:
    now = time.time()
    replicas = sorted(
        (
            replica_public(r, now)
            for r in ctx.replicas.items.values()
            if r.endpoint == ep.name and r.fresh(now)
        ),
        key=lambda r: r.replica_id,
    )
    data = ep.model_dump()
    data["endpoint"] = f"{ctx.settings.base_url()}/e/{ep.name}"
    data["replicas"] = replicas
    if backlog is not None:
        data["queued"], data["in_flight"] = backlog.queued, backlog.in_flight
    health = ctx.health.items.get(ep.name)
    if health is not None:
        data["failing"] = health.model_dump(include={"reason", "failures", "since", "retry_at"})
    return EndpointPublic.model_validate(data)


async def publish_spec(ctx: AppContext, ep: Endpoint) -> None:
    """Make the endpoint's current config live: its consumer, and the KV mirror."""
    spec = to_spec(ep)
    await ensure_endpoint_consumer(ctx.broker, spec, ack_wait=ctx.settings.ack_wait)
    await put_model(ctx.broker, names.KV_ENDPOINTS, ep.name, spec)
    ctx.endpoints.items[ep.name] = spec  # visible to this instance's data plane at once


async def check_references(
    store: SecretStore, container_secrets: list[str], registry_credential: str | None
) -> None:
    """422 unless every secret and the credential an endpoint names exist."""
    for key in container_secrets:
        if not SECRET_KEY_RE.match(key) or await store.get(Kind.SECRET, key) is None:
            raise InvalidRequest(
                f"container_secrets: secret {key!r} does not exist (POST /v1/secret first)"
            )
    if registry_credential is not None and (
        not CREDENTIAL_KEY_RE.match(registry_credential)
        or await store.get(Kind.REGISTRY, registry_credential) is None
    ):
        raise InvalidRequest(
            f"registry_credential: {registry_credential!r} does not exist "
            "(POST /v1/registry-credential first)"
        )


async def save_change(
    ctx: AppContext, session: AsyncSession, ep: Endpoint, fields: list[str]
) -> None:
    """Commit a changed endpoint and make it live: a new revision, its spec, an event."""
    ep.revision += 1
    ep.updated_at = time.time()
    session.add(ep)
    await session.commit()
    await session.refresh(ep)
    await publish_spec(ctx, ep)
    await publish_event(ctx.broker, "endpoint", ep.name, "endpoint_updated", fields=fields)


async def get_endpoint_row(session: SessionDep, name: str) -> Endpoint:
    ep = (await session.exec(select(Endpoint).where(Endpoint.name == name))).first()
    if ep is None:
        raise NotFound(f"endpoint {name!r} does not exist")
    return ep


async def _from_example(ctx: AppContext, body: EndpointCreate) -> EndpointCreate:
    """The example's model stored as the endpoint's, and its defaults where the body is silent."""
    assert body.example is not None
    try:
        example = catalog().get(body.example)
    except NotFound as exc:
        raise InvalidRequest(exc.message) from exc
    archive = await asyncio.to_thread(pack_dir, example.folder)
    model_id = await store_model(ctx.broker, archive, ArchiveLimits.of(ctx.settings))
    meta = example.meta
    defaults = {
        "instance_type": meta.instance_type,
        "min_replicas": meta.min_replicas,
        "max_replicas": meta.max_replicas,
        "scale_to_zero": meta.scale_to_zero,
        "concurrency_per_replica": meta.concurrency_per_replica,
        "description": meta.description,
    }
    values = {k: v for k, v in defaults.items() if k not in body.model_fields_set}
    return body.model_copy(update={**values, "model_id": model_id})


async def resolve_assets(
    session: AsyncSession, keys: list[str], tenant: str
) -> tuple[list[str], list[dict[str, Any]]]:
    """The ready assets ``keys`` name (ids, names or owner/name): their ids, and what an
    agent needs to mount each; 422 for one that is missing or not ready."""
    ids: list[str] = []
    refs: list[dict[str, Any]] = []
    for key in keys:
        asset = await lookup_asset(session, key, tenant)
        if asset is None or asset.status == AssetStatus.DELETED:
            raise InvalidRequest(f"assets: asset {key!r} does not exist")
        if asset.status != AssetStatus.READY or not asset.sha256:
            raise InvalidRequest(f"assets: asset {key!r} is {asset.status}, not ready")
        if asset.id in ids:
            continue
        if any(ref["name"] == asset.name for ref in refs):
            raise InvalidRequest(f"assets: two assets named {asset.name!r}")
        ids.append(asset.id)
        refs.append(
            {
                "id": asset.id,
                "name": asset.name,
                "sha256": asset.sha256,
                "size_bytes": asset.size_bytes,
            }
        )
    return ids, refs


async def _check_model(ctx: AppContext, model_id: str | None) -> None:
    if model_id and not await model_exists(ctx.broker, model_id):
        raise InvalidRequest(f"model {model_id!r} was never uploaded (POST /v1/models first)")


@router.post(
    "/endpoint",
    status_code=status.HTTP_201_CREATED,
    response_model=EndpointPublic,
    responses=errors(409),
)
async def create_endpoint(
    body: EndpointCreate, ctx: ContextDep, session: SessionDep
) -> EndpointPublic:
    if (await session.exec(select(Endpoint).where(Endpoint.name == body.name))).first():
        raise Conflict(f"endpoint {body.name!r} already exists")
    if body.example:
        body = await _from_example(ctx, body)
    await _check_model(ctx, body.model_id)
    await check_references(ctx.store, body.container_secrets, body.registry_credential)
    asset_ids, asset_refs = await resolve_assets(session, body.assets, ctx.settings.tenant)
    ep = Endpoint.model_validate(body)
    ep.assets, ep.asset_refs = asset_ids, asset_refs
    session.add(ep)
    await session.commit()
    await session.refresh(ep)
    try:
        await publish_spec(ctx, ep)
    except TooManyEndpoints:
        await session.delete(ep)  # it never existed for the data plane: nor for the API
        await session.commit()
        raise
    await publish_event(ctx.broker, "endpoint", ep.name, "endpoint_created")
    return to_public(ctx, ep)


@router.get("/endpoints", response_model=list[EndpointPublic])
async def list_endpoints(ctx: ContextDep, session: SessionDep) -> list[EndpointPublic]:
    rows = (await session.exec(select(Endpoint).order_by(Endpoint.name))).all()
    return [to_public(ctx, ep) for ep in rows]


@router.get("/endpoint/{endpoint_name}", response_model=EndpointPublic)
async def get_endpoint(endpoint_name: str, ctx: ContextDep, session: SessionDep) -> EndpointPublic:
    ep = await get_endpoint_row(session, endpoint_name)
    return to_public(ctx, ep, await backlog(ctx.broker, ep.name))


@router.patch("/endpoint/{endpoint_name}", response_model=EndpointPublic)
async def update_endpoint(
    endpoint_name: str, body: EndpointUpdate, ctx: ContextDep, session: SessionDep
) -> EndpointPublic:
    ep = await get_endpoint_row(session, endpoint_name)
    changes = body.model_dump(exclude_unset=True)
    merged: dict[str, Any] = ep.model_dump() | changes
    whole = {k: v for k, v in merged.items() if k in EndpointCreate.model_fields}
    if whole.get("example"):
        whole["model_id"] = None  # the example's model, stored as model_id when it was made
    try:
        check_endpoint_config(merged)
        EndpointCreate.model_validate(whole)
    except ValidationError as exc:
        details = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False)
        ]
        first = details[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(
            f"{where}: {first['msg']}" if where else str(first["msg"]), details=details
        ) from exc
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    if "model_id" in changes:
        await _check_model(ctx, changes["model_id"])
    if "container_secrets" in changes or "registry_credential" in changes:
        await check_references(
            ctx.store, merged["container_secrets"], merged["registry_credential"]
        )
    if "assets" in changes:
        changes["assets"], ep.asset_refs = await resolve_assets(
            session, changes["assets"], ctx.settings.tenant
        )
    for key, value in changes.items():
        setattr(ep, key, value)
    await save_change(ctx, session, ep, sorted(changes))
    return to_public(ctx, ep)


@router.delete("/endpoint/{endpoint_name}")
async def delete_endpoint(
    endpoint_name: str, ctx: ContextDep, session: SessionDep
) -> dict[str, str]:
    ep = await get_endpoint_row(session, endpoint_name)
    await session.delete(ep)
    await session.commit()
    await delete_key(ctx.broker, names.KV_ENDPOINTS, endpoint_name)
    ctx.endpoints.items.pop(endpoint_name, None)
    await delete_endpoint_consumer(ctx.broker, endpoint_name)
    await publish_event(ctx.broker, "endpoint", endpoint_name, "endpoint_deleted")
    return {"message": f"endpoint {endpoint_name} deleted"}
