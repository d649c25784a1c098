"""Fine-tuning runs on the fleet: a trainer endpoint and one job per tune, followed
until it ends (see api/routes/tunes.py for the API).

Every API instance runs a watcher; what they write is the same whoever writes first,
and the output asset's id is derived from its tune, so two watchers make one asset.

``start_tune`` makes the tune's trainer endpoint (from the catalogue example that
trains for the tune's engine, its training files mounted as assets) and queues the
training job. ``TuneWatcher`` follows every live tune's job: running when a replica
takes it; when it completes, the adapter in its answer is stored as a LoRA asset and
the tune succeeds; when it fails, expires or is cancelled, the tune ends so, with the
reason. The trainer endpoint is deleted when its tune ends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.context import AppContext
from api.dataplane.asks import Ask
from api.dataplane.jobs import submit_job
from api.middleware import new_request_id
from api.routes.assets import asset_named
from api.routes.endpoints import create_endpoint, delete_endpoint
from broker.assets import store_content
from broker.envelope import RequestEnvelope
from broker.jobs import apply, get_job, get_response
from shared.errors import BerthError, NotFound
from shared.lifecycle import Cancelled
from shared.messages import JobStatus
from shared.models import Asset, AssetStatus, EndpointCreate, Tune, TuneStatus
from shared.settings import ApiSettings

__all__ = ["TRAINERS", "Trainer", "TuneWatcher", "cancel_tune", "missing_settings", "start_tune"]

log = logging.getLogger(__name__)

WATCH_EVERY = 1.0  # seconds between looks at the live tunes' jobs
TRAINER_IDLE = 60  # a trainer endpoint's scale_to_zero (it is deleted when its tune ends)


def _pairs_body(details: dict[str, Any], files: list[Asset]) -> dict[str, Any]:
    """The embeddings trainer's: JSON lines files of labelled pairs."""
    body: dict[str, Any] = {"files": [f.name for f in files], "steps": details["steps"]}
    if details.get("seed") is not None:
        body["seed"] = details["seed"]
    return body


def _pictures_body(details: dict[str, Any], files: list[Asset]) -> dict[str, Any]:
    """The SDXL trainer's: pictures, each with the caption its tune entry gave (an asset
    named twice keeps its first caption)."""
    captions: dict[str, str] = {}
    for entry in details["files"]:
        captions.setdefault(entry["file_id"], str(entry.get("caption") or ""))
    body: dict[str, Any] = {
        "files": [f.name for f in files],
        "captions": [captions.get(f.id, "") for f in files],
        "trigger_words": details.get("trigger_words") or [],
        "steps": details["steps"],
    }
    for key in ("seed", "resize_images"):
        if details.get(key) is not None:  # null: the trainer's default
            body[key] = details[key]
    return body


@dataclass(frozen=True, slots=True)
class Trainer:
    example: str  # the catalogue example whose model trains
    route: str  # its training route
    body: Callable[[dict[str, Any], list[Asset]], dict[str, Any]]  # its training request
    formats: tuple[str, ...]  # the training files' formats it reads
    # Settings its replica cannot start without, which only the operator knows (where
    # the base weights are): given in BERTH_TRAINERS, else such a tune is refused.
    needs: tuple[str, ...] = ()


TRAINERS = {
    "text/all-minilm-l6-v2": Trainer("embeddings", "/train", _pairs_body, ("jsonl",)),
    "image/stable-diffusion-xl-v1-0": Trainer(
        "sdxl", "/train", _pictures_body, ("png", "jpg", "jpeg"), needs=("SDXL_WEIGHTS",)
    ),
}


def missing_settings(settings: ApiSettings, engine: str) -> list[str]:
    """What the operator has not given an engine's trainer (BERTH_TRAINERS)."""
    given = settings.trainers.get(engine)
    env = given.env if given else {}
    return [name for name in TRAINERS[engine].needs if not env.get(name)]


def trainer_endpoint(tune: Tune) -> str:
    return f"tune-{tune.id.removeprefix('tune_')[:12]}"


async def start_tune(
    ctx: AppContext, session: AsyncSession, tune: Tune, engine: str, files: list[Asset]
) -> None:
    """Make the tune's trainer endpoint and queue its training job; a failure ends the
    tune ``failed`` with the reason."""
    trainer = TRAINERS[engine]
    name = trainer_endpoint(tune)
    given = ctx.settings.trainers.get(engine)
    operator: dict[str, Any] = {}  # where it runs (else the example's default), its env
    if given is not None:
        operator["env_overrides"] = dict(given.env)
        if given.instance_type:
            operator["instance_type"] = given.instance_type
    try:
        spec = EndpointCreate(
            name=name,
            example=trainer.example,
            description=f"fine-tuning {tune.id} ({tune.name})",
            min_replicas=0,
            max_replicas=1,
            scale_to_zero=TRAINER_IDLE,
            request_timeout=3600.0,
            assets=[f.id for f in files],
            **operator,
        )
        await create_endpoint(spec, ctx, session)
        tune.endpoint = name
        body = trainer.body(tune.details, files)
        envelope = RequestEnvelope(
            request_id=new_request_id(),
            method="POST",
            path=trainer.route,
            headers=[("content-type", "application/json")],
        )
        ask = Ask()
        ask.is_async = True
        await submit_job(ctx, ctx.endpoints.items[name], envelope, orjson.dumps(body), ask, None)
        tune.response_id = envelope.request_id
        tune.status_details = "queued: waiting for a trainer replica"
    except BerthError as exc:
        tune.status = TuneStatus.FAILED
        tune.status_details = f"the training could not be started: {exc.message}"
        await _drop_endpoint(ctx, session, tune)
    tune.updated_at = time.time()
    session.add(tune)
    await session.commit()
    await session.refresh(tune)


async def cancel_tune(ctx: AppContext, session: AsyncSession, tune: Tune, reason: str) -> None:
    if tune.response_id:
        job = await get_job(ctx.broker, tune.response_id)
        done = await apply(ctx.broker, tune.response_id, Cancelled(at=time.time()))
        if job is not None and done is not None:
            await ctx.requester.cancel(job.endpoint, job.response_id, job.seq)
    await _end(ctx, session, tune, TuneStatus.CANCELLED, reason)


async def _end(
    ctx: AppContext, session: AsyncSession, tune: Tune, status: TuneStatus, reason: str
) -> None:
    tune.status, tune.status_details = status, reason
    tune.updated_at = time.time()
    if status == TuneStatus.SUCCEEDED:
        tune.succeeded_at = tune.updated_at
    session.add(tune)
    await session.commit()
    await session.refresh(tune)
    await _drop_endpoint(ctx, session, tune)


async def _drop_endpoint(ctx: AppContext, session: AsyncSession, tune: Tune) -> None:
    if tune.endpoint:
        with contextlib.suppress(NotFound):
            await delete_endpoint(tune.endpoint, ctx, session)


class TuneWatcher:
    """Follows the live tunes' jobs (one per API instance)."""

    def __init__(self, ctx: AppContext):
        self._ctx = ctx
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tune-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # a lost broker or database: try again at the next turn
                log.exception("following the tunes failed")
            await asyncio.sleep(WATCH_EVERY)

    async def sweep(self) -> None:
        async with self._ctx.db.session() as session:
            live = (
                await session.exec(
                    select(Tune).where(
                        Tune.status.in_([TuneStatus.PENDING, TuneStatus.RUNNING]),  # type: ignore[attr-defined]
                        Tune.deleted_at == None,  # noqa: E711
                    )
                )
            ).all()
            for tune in live:
                if tune.response_id:
                    await self._follow(session, tune)

    async def _follow(self, session: AsyncSession, tune: Tune) -> None:
        ctx = self._ctx
        job = await get_job(ctx.broker, tune.response_id)
        if job is None:
            await _end(ctx, session, tune, TuneStatus.FAILED, "its training job is gone")
            return
        match job.status:
            case JobStatus.PENDING:
                return
            case JobStatus.RUNNING:
                if tune.status != TuneStatus.RUNNING:
                    tune.status = TuneStatus.RUNNING
                    tune.status_details = f"training on replica {job.replica_id}"
                    tune.updated_at = time.time()
                    session.add(tune)
                    await session.commit()
            case JobStatus.COMPLETED:
                await self._register(session, tune)
            case JobStatus.CANCELLED:
                await _end(ctx, session, tune, TuneStatus.CANCELLED, job.reason or "cancelled")
            case _:
                reason = job.reason or f"its training job ended {job.status.value}"
                await _end(ctx, session, tune, TuneStatus.FAILED, reason)

    async def _register(self, session: AsyncSession, tune: Tune) -> None:
        """The trainer's adapter, stored as a LoRA asset: the tune's output."""
        ctx = self._ctx
        reply = await get_response(ctx.broker, tune.response_id)
        if reply is None:
            await _end(ctx, session, tune, TuneStatus.FAILED, "its training answer is gone")
            return
        try:
            answer = orjson.loads(reply.body)
            output: dict[str, Any] = answer["output"]
            data = base64.b64decode(output["adapter"]["data"], validate=True)
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
            text = reply.body[:500].decode("utf-8", "replace")
            await _end(
                ctx,
                session,
                tune,
                TuneStatus.FAILED,
                f"the trainer answered {reply.status}: {text}",
            )
            return
        digest = hashlib.sha256(data).hexdigest()
        spool = ctx.settings.data_dir / "asset-uploads"
        await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
        path = Path(await asyncio.to_thread(_spooled, spool, data))
        try:
            await store_content(ctx.broker, digest, path)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        details = tune.details
        checkpoint = details.get("base_checkpoint") or {}
        name = f"{tune.name}-lora"
        if await asset_named(session, name) is not None:
            name = f"{name}-{secrets.token_hex(3)}"
        now = time.time()
        asset = Asset(
            # Derived from the tune: a second API's watcher that registers the same output
            # at the same moment collides on the key instead of making a second asset.
            id="asset_" + hashlib.sha256(tune.id.encode()).hexdigest()[:24],
            name=name,
            asset_type="lora",
            data={
                "asset_type": "lora",
                "engine": checkpoint.get("engine") or "",
                "data_type": "fp32",
                "file_format": "safetensors",
                "trigger_words": details.get("trigger_words") or [],
                "checkpoint": checkpoint.get("checkpoint_id"),
            },
            description=f"made by tune {tune.id} ({tune.name})",
            status=AssetStatus.READY,
            size_bytes=len(data),
            sha256=digest,
            created_at=now,
            updated_at=now,
        )
        session.add(asset)
        try:
            await session.flush()
        except IntegrityError:  # registered by another API's watcher: it ends the tune
            await session.rollback()
            return
        tune.output_lora_ids = [asset.id]
        tune.metrics = {k: v for k, v in output.get("metrics", {}).items() if k != "losses"}
        await _end(ctx, session, tune, TuneStatus.SUCCEEDED, "")


def _spooled(folder: Path, data: bytes) -> str:
    with tempfile.NamedTemporaryFile(dir=folder, prefix="tune.", delete=False) as f:
        f.write(data)
        return f.name
