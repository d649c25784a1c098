"""The API application: control plane, data plane, and the lifespan that owns their resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlmodel import select
from starlette.types import ASGIApp, Receive, Scope, Send

from api.asset_imports import AssetImports
from api.auth import Authenticator, PrincipalDep
from api.callbacks import Dispatcher, WebhookSecrets
from api.console import install_console
from api.context import AppContext
from api.errors import error_response, install_error_handlers
from api.jobs import DeadlineTimers
from api.metrics import Recorder
from api.middleware import HostRouting, RequestId
from api.openapi import errors, install_openapi
from api.replica_secrets import replica_secrets
from api.routes import (
    assets,
    endpoints,
    events,
    examples,
    fleet,
    live,
    logs,
    models,
    requests,
    secrets,
    tokens,
    tunes,
)
from api.routes.assets import clean_spool
from api.routes.inference import DataPlane
from api.tuning import TuneWatcher
from broker.connection import connected
from broker.jobs import ensure_results
from broker.publish import Requester
from broker.registry import KvView, delete_key
from broker.secrets import serve_replica_secrets
from broker.streams import until_laid_out
from shared import names
from shared.db import Database, run_migrations
from shared.errors import Forbidden
from shared.messages import AgentRecord, EndpointHealth, EndpointSpec, ReplicaRecord
from shared.models import ApiToken, Endpoint
from shared.settings import ApiSettings
from shared.stores import open_store
from shared.tokens import has_admin_token

__all__ = ["BerthApp", "create_app"]

log = logging.getLogger(__name__)


async def _resync(ctx: AppContext) -> None:
    """The database is the source of truth; make consumers and the KV mirror agree with it."""
    async with ctx.db.session() as session:
        rows = (await session.exec(select(Endpoint))).all()
    known = {ep.name for ep in rows}
    for ep in rows:
        await endpoints.publish_spec(ctx, ep)
    for name in list(ctx.endpoints.items):
        if name not in known:
            await delete_key(ctx.broker, names.KV_ENDPOINTS, name)
            ctx.endpoints.items.pop(name, None)


_SLASHES = re.compile(r"/{2,}")


class BerthApp:
    """The API's ASGI app: the data plane (``/e/...``) beside the FastAPI control plane.

    Request ids and host routing wrap both; lifespan and everything else goes to FastAPI.
    ``direct`` is the data plane's own entry for the API's HTTP protocol, which serves
    ``/e/...`` without the ASGI chain (api/http.py); None where host routing may
    rewrite paths, so that every request goes through it.
    """

    def __init__(self, control: FastAPI, settings: ApiSettings):
        self.control = control
        self.data = DataPlane(lambda: control.state.ctx)
        self.direct = None if settings.endpoint_domain else self.data.answer
        dispatch: ASGIApp = self._dispatch
        if settings.endpoint_domain:
            dispatch = HostRouting(dispatch, settings.endpoint_domain)
        self._app = RequestId(dispatch)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/e/"):
            await self.data(scope, receive, send)
        elif "//" in scope["path"]:
            # octoai-sdk 0.10 joins its base URL and paths into //v1/...: one slash meant.
            path = _SLASHES.sub("/", scope["path"])
            await self.control({**scope, "path": path, "raw_path": path.encode()}, receive, send)
        else:
            await self.control(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.control(scope, receive, send)
        else:
            await self._app(scope, receive, send)


async def _check_some_admin(settings: ApiSettings, db: Database) -> None:
    """Nothing is open by accident, and nobody is locked out by accident either."""
    if settings.static_admin_token():
        return
    async with db.session() as session:
        rows = list((await session.exec(select(ApiToken))).all())
    if not has_admin_token(rows, time.time()):
        raise RuntimeError(
            "no admin token: set BERTH_ADMIN_TOKEN, or run `berth tokens bootstrap` once "
            "(`berth up` does this on first start)"
        )


def create_app(settings: ApiSettings) -> BerthApp:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.resolved_database_url()
        await asyncio.to_thread(run_migrations, url)
        await asyncio.to_thread(clean_spool, settings.data_dir / "asset-uploads")
        db = Database(url)
        try:
            await _check_some_admin(settings, db)
            store = await open_store(settings, db)
            async with (
                contextlib.AsyncExitStack() as stack,
                connected(
                    settings.nats_url,
                    "berth-api",
                    timeout=settings.nats_timeout,
                    replicas=settings.nats_replicas,
                ) as broker,
            ):
                stack.push_async_callback(store.close)
                await until_laid_out(
                    lambda: ensure_results(broker, settings.result_ttl), "the job store"
                )
                requester = Requester(broker)
                await requester.start()
                endpoint_view = KvView(broker, names.KV_ENDPOINTS, EndpointSpec)
                ctx = AppContext(
                    settings=settings,
                    db=db,
                    broker=broker,
                    requester=requester,
                    endpoints=endpoint_view,
                    replicas=KvView(broker, names.KV_REPLICAS, ReplicaRecord),
                    agents=KvView(broker, names.KV_AGENTS, AgentRecord),
                    health=KvView(broker, names.KV_HEALTH, EndpointHealth),
                    auth=Authenticator(
                        db,
                        settings.static_admin_token(),
                        settings.token_cache_ttl,
                        settings.token_stale_ttl,
                    ),
                    store=store,
                    webhooks=WebhookSecrets(store),
                    deadlines=DeadlineTimers(broker),
                    metrics=Recorder(
                        settings.metrics_interval, lambda name: name in endpoint_view.items
                    ),
                )
                await ctx.endpoints.start()
                await ctx.replicas.start()
                await ctx.agents.start()
                await ctx.health.start()
                dispatcher = Dispatcher(ctx)
                tunes = TuneWatcher(ctx)
                ctx.imports = AssetImports(ctx)
                try:
                    await _resync(ctx)
                    await serve_replica_secrets(broker, partial(replica_secrets, ctx))
                    await dispatcher.start()
                    await tunes.start()
                    resumed = await ctx.imports.resume()
                    if resumed:
                        log.info("fetching %d asset(s) from their URLs again", resumed)
                    ctx.metrics.start(
                        lambda: (
                            list(ctx.endpoints.items),
                            list(ctx.replicas.items.values()),
                            ctx.broker,
                        )
                    )
                    app.state.ctx = ctx
                    log.info("API ready on %s (%s secret store)", settings.base_url(), store.name)
                    yield
                finally:
                    await ctx.metrics.stop()
                    await ctx.imports.stop()
                    await tunes.stop()
                    await dispatcher.stop()
                    await ctx.endpoints.stop()
                    await ctx.replicas.stop()
                    await ctx.agents.stop()
                    await ctx.health.stop()
        finally:
            await db.close()

    app = FastAPI(title="Berth", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(endpoints.router)
    app.include_router(models.router)
    app.include_router(events.router)
    app.include_router(tokens.router)
    app.include_router(fleet.router)
    app.include_router(logs.router)
    app.include_router(requests.router)
    app.include_router(secrets.router)
    app.include_router(examples.router)
    app.include_router(live.router)
    app.include_router(assets.router)
    app.include_router(tunes.router)
    install_console(app)

    @app.get(
        "/metrics",
        tags=["system"],
        response_class=PlainTextResponse,
        responses=errors(401, 403),
    )
    async def metrics(principal: PrincipalDep) -> PlainTextResponse:
        """This API instance's Prometheus metrics (a token with the metrics or admin scope)."""
        if not principal.may_scrape():
            raise Forbidden("this token may not read metrics (it needs the metrics scope)")
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["system"], responses=errors(503), response_model=None)
    async def healthz(request: Request) -> dict[str, str] | Response:
        """200 while this instance takes work; 503 while it drains before stopping
        (BERTH_DRAIN_SECONDS after a SIGTERM), so that a load balancer takes it out first."""
        if getattr(request.app.state, "draining", False):
            return error_response(
                503, "draining", "this API instance is stopping: send requests to another"
            )
        return {"status": "ok"}

    return BerthApp(app, settings)
