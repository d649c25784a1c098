"""Fine-tuning, with OctoAI's paths and shapes (``/v1/tune``, ``/v1/tunes``).

A tune runs as work on the fleet: Berth makes a trainer endpoint of its own
(``tune-<id>``, one replica at most, scaled from zero, placed by the scaler where the
trainer's hardware is), mounts the tune's training files on it as assets, and queues
one job on its ``/train`` route. The tune's state follows that job (api/tuning.py);
when it succeeds, the adapter it answered with is registered as a LoRA asset and
named in ``output_lora_ids``, and the trainer endpoint is deleted. Its events and logs
are the trainer endpoint's while it runs (``GET /v1/events/tune-<id>``).

Trainers, by the base checkpoint's engine:

- ``text/all-minilm-l6-v2``: a low-rank adapter on the embeddings example's
  sentence vectors, trained on CPU from JSON lines of labelled pairs
  (``{"a", "b", "label": 1 | 0}``), examples/embeddings/adapter.py.
- ``image/stable-diffusion-xl-v1-0``: a LoRA of SDXL's UNet, trained on a GPU from
  PNG or JPEG pictures, each with its caption (or the trigger words), by the sdxl
  example (examples/sdxl/lora.py). It needs the base weights, which only the operator
  has: ``BERTH_TRAINERS`` names them (and the trainer's instance type); without
  them such a tune is refused with 422 saying so.

Other engines (Stable Diffusion 1.5, speech) have no trainer on this Berth: such a
tune is refused with 422 naming the engines that have one.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import select

from api.auth import AdminDep
from api.context import AppContext, ContextDep, SessionDep
from api.openapi import errors
from api.routes.assets import NAME_RE, iso_time, split_values
from api.tuning import TRAINERS, cancel_tune, missing_settings, start_tune
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.models import Asset, AssetStatus, Tune, TuneStatus

router = APIRouter(prefix="/v1", tags=["fine-tuning"], dependencies=[AdminDep])

TUNE_TYPES = (
    "lora_tune",
    "text_to_speech_latent_tune",
    "text_to_speech_rvc_tune",
    "text_to_speech_tortoise_tune",
)
LIVE = (TuneStatus.PENDING, TuneStatus.RUNNING)


class TuneCreate(BaseModel):
    """OctoAI's create body; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=128)
    description: str | None = Field(default=None, max_length=2000)
    details: dict[str, Any]
    continue_on_rejection: bool | None = None


def tune_public(ctx: AppContext, tune: Tune) -> dict[str, Any]:
    """OctoAI's Tune object (every field its strictest client requires)."""
    out: dict[str, Any] = {
        "id": tune.id,
        "name": tune.name,
        "description": tune.description,
        "details": tune.details,
        "tune_type": tune.tune_type,
        "status": str(tune.status),
        "status_details": tune.status_details,
        "output_lora_ids": tune.output_lora_ids,
        "tenant_id": ctx.settings.tenant,
        "created_at": iso_time(tune.created_at),
        "updated_at": iso_time(tune.updated_at),
        # Berth's additions: the trainer endpoint (its events and logs) and its job.
        "endpoint": tune.endpoint,
        "response_id": tune.response_id,
        "metrics": tune.metrics,
    }
    if tune.succeeded_at is not None:
        out["succeeded_at"] = iso_time(tune.succeeded_at)
        out["result"] = {"output_assets": tune.output_lora_ids}
    if tune.deleted_at is not None:
        out["deleted_at"] = iso_time(tune.deleted_at)
    return out


async def _training_files(session: SessionDep, files: list[Any], engine: str) -> list[Asset]:
    formats = TRAINERS[engine].formats
    found: list[Asset] = []
    for i, item in enumerate(files):
        file_id = item.get("file_id") if isinstance(item, dict) else None
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequest(f"details.files[{i}]: needs a file_id (a file asset)")
        caption = item.get("caption")
        if caption is not None and (not isinstance(caption, str) or len(caption) > 1000):
            raise InvalidRequest(f"details.files[{i}].caption: a string of at most 1000")
        asset = await session.get(Asset, file_id)
        if asset is None or asset.status == AssetStatus.DELETED:
            raise InvalidRequest(f"details.files[{i}]: asset {file_id!r} does not exist")
        if asset.status != AssetStatus.READY:
            raise InvalidRequest(f"details.files[{i}]: asset {file_id!r} is {asset.status}")
        if asset.asset_type != "file":
            raise InvalidRequest(f"details.files[{i}]: asset {file_id!r} is not a file asset")
        fmt = str(asset.data.get("file_format") or "").lower()
        if fmt not in formats:
            raise InvalidRequest(
                f"details.files[{i}]: asset {file_id!r} is {fmt or 'of no format'}; "
                f"{engine}'s trainer reads {', '.join(formats)}"
            )
        if asset not in found:
            found.append(asset)
    return found


async def _engine(session: SessionDep, checkpoint: dict[str, Any]) -> str:
    """The engine a tune trains for: the base checkpoint's, given or from its asset."""
    engine = checkpoint.get("engine")
    checkpoint_id = checkpoint.get("checkpoint_id")
    if not engine and isinstance(checkpoint_id, str):
        asset = await session.get(Asset, checkpoint_id)
        if asset is not None:
            engine = asset.data.get("engine")
    if not isinstance(engine, str) or not engine:
        raise InvalidRequest(
            "details.base_checkpoint: name its engine (or a checkpoint asset that has one)"
        )
    return engine


@router.post("/tune", status_code=201, responses=errors(409))
async def create_tune(body: TuneCreate, ctx: ContextDep, session: SessionDep) -> dict[str, Any]:
    details = dict(body.details)
    tune_type = details.setdefault("tune_type", "lora_tune")  # TypeScript leaves it out
    if tune_type not in TUNE_TYPES:
        raise InvalidRequest(f"details.tune_type: one of {', '.join(TUNE_TYPES)}")
    if not NAME_RE.match(body.name):
        raise InvalidRequest("name: 1-128 letters, digits, '_', '.' or '-'")
    if tune_type != "lora_tune":
        raise InvalidRequest(f"details.tune_type {tune_type!r} has no trainer on this Berth")
    checkpoint = details.get("base_checkpoint")
    if not isinstance(checkpoint, dict) or not checkpoint.get("checkpoint_id"):
        raise InvalidRequest("details.base_checkpoint: {checkpoint_id, engine?} is required")
    engine = await _engine(session, checkpoint)
    if engine not in TRAINERS:
        raise InvalidRequest(
            f"details.base_checkpoint.engine {engine!r} has no trainer on this Berth "
            f"(trainers: {', '.join(sorted(TRAINERS))})"
        )
    missing = missing_settings(ctx.settings, engine)
    if missing:
        raise InvalidRequest(
            f"{engine}'s trainer is not set up on this Berth: the operator gives its "
            f"{', '.join(missing)} in BERTH_TRAINERS"
        )
    steps = details.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 20_000:
        raise InvalidRequest("details.steps: a whole number from 1 to 20000")
    files = details.get("files")
    if not isinstance(files, list) or not files:
        raise InvalidRequest("details.files: one or more {file_id} of file assets")
    training = await _training_files(session, files, engine)
    words = details.get("trigger_words")
    if (
        not isinstance(words, list)
        or len(words) > 8
        or not all(isinstance(w, str) and len(w) <= 100 for w in words)
    ):
        raise InvalidRequest("details.trigger_words: a list of at most 8 strings")
    resize = details.get("resize_images")
    if resize is not None and not isinstance(resize, bool):
        raise InvalidRequest("details.resize_images: true or false")
    seed = details.get("seed")  # octoai-sdk 0.10 sends null for "any"
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise InvalidRequest("details.seed: a whole number")
    existing = await session.exec(
        select(Tune).where(Tune.name == body.name, Tune.deleted_at == None)  # noqa: E711
    )
    if existing.first() is not None:
        raise Conflict(f"tune {body.name!r} already exists")
    now = time.time()
    tune = Tune(
        id=f"tune_{secrets.token_hex(10)}",
        name=body.name,
        description=body.description or "",
        tune_type=tune_type,
        details=details,
        created_at=now,
        updated_at=now,
    )
    session.add(tune)
    await session.commit()
    await session.refresh(tune)
    await start_tune(ctx, session, tune, engine, training)
    return tune_public(ctx, tune)


@router.get("/tunes")
async def list_tunes(
    ctx: ContextDep,
    session: SessionDep,
    name: str | None = None,
    tune_type: str | None = None,
    base_checkpoint_id: str | None = None,
    trigger_words: Annotated[list[str] | None, Query()] = None,
    engine: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    rows = (
        await session.exec(
            select(Tune)
            .where(Tune.deleted_at == None)  # noqa: E711
            .order_by(Tune.created_at.desc())  # type: ignore[attr-defined]
        )
    ).all()
    words = set(split_values(trigger_words))

    def wanted(t: Tune) -> bool:
        checkpoint = t.details.get("base_checkpoint") or {}
        return (
            (name is None or name in t.name)
            and (tune_type is None or t.tune_type == tune_type)
            and (
                base_checkpoint_id is None or checkpoint.get("checkpoint_id") == base_checkpoint_id
            )
            and (engine is None or checkpoint.get("engine") == engine)
            and (not words or bool(words & set(t.details.get("trigger_words") or ())))
        )

    matched = [t for t in rows if wanted(t)]
    page = matched[offset : offset + limit]
    return {
        "data": [tune_public(ctx, t) for t in page],
        "has_more": offset + len(page) < len(matched),
        "total": len(matched),
    }


async def _tune(session: SessionDep, tune_id: str) -> Tune:
    tune = await session.get(Tune, tune_id)
    if tune is None or tune.deleted_at is not None:
        raise NotFound(f"tune {tune_id!r} does not exist")
    return tune


@router.get("/tune/{tune_id}", responses=errors(404))
async def get_tune(tune_id: str, ctx: ContextDep, session: SessionDep) -> dict[str, Any]:
    return tune_public(ctx, await _tune(session, tune_id))


@router.post("/tune/{tune_id}/cancel", responses=errors(404, 409))
async def cancel(tune_id: str, ctx: ContextDep, session: SessionDep) -> dict[str, Any]:
    """Stop a pending or running tune (it ends ``cancelled``); twice is not an error."""
    tune = await _tune(session, tune_id)
    if tune.status in LIVE:
        await cancel_tune(ctx, session, tune, "cancelled by the caller")
    elif tune.status != TuneStatus.CANCELLED:
        raise Conflict(f"tune {tune_id!r} has ended already ({tune.status})")
    return tune_public(ctx, tune)


@router.delete("/tune/{tune_id}", responses=errors(404))
async def delete_tune(tune_id: str, ctx: ContextDep, session: SessionDep) -> dict[str, Any]:
    """Delete a tune (cancelled first if it runs); the assets it made stay."""
    tune = await _tune(session, tune_id)
    if tune.status in LIVE:
        await cancel_tune(ctx, session, tune, "the tune was deleted")
    tune.deleted_at = tune.updated_at = time.time()
    session.add(tune)
    await session.commit()
    return {"id": tune.id, "deleted_at": iso_time(tune.deleted_at)}
