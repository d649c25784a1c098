"""Assets created from a URL (OctoAI's ``url`` on ``POST /v1/assets``): the API fetches it.

The URL must be http(s) and, unless ``BERTH_ASSET_URL_ALLOW_PRIVATE``, reach only public
addresses, at every redirect too (shared/egress.py: the check is on the address each
connection really goes to). The body is streamed to a spool file while its sha256 and
size are counted, refused past ``BERTH_ASSET_MAX_BYTES`` (the declared length first, then
what arrives), checked like an upload (the declared ``sha256`` and ``size_bytes``, then
``data.file_format``), and stored by sha256 like an upload. The asset is ``uploaded``
meanwhile, then ``ready``, or ``rejected`` (the content) or ``error`` (the fetch) with
the reason in ``status_details``.

The URL is kept in the asset's record, never shown back (a signed URL is a credential).
An API instance that stops mid-fetch leaves the asset ``uploaded``; every instance,
when it starts, fetches again the assets left that way: content is stored by its
digest, so two instances fetching the same one store it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx
from sqlmodel import select

from broker.assets import store_content
from shared.egress import BlockedAddress, guarded_client, http_url
from shared.models import Asset, AssetStatus

if TYPE_CHECKING:
    from api.context import AppContext

__all__ = ["AssetImports", "check_import_url"]

log = logging.getLogger(__name__)

MAX_URL = 2048
_TIMEOUT = httpx.Timeout(30.0, read=60.0)
_CHUNK = 1024 * 1024


def check_import_url(url: str) -> str:
    """An absolute http(s) URL with a host, at most MAX_URL characters; 422 otherwise."""
    http_url(url, "url", MAX_URL)
    return url


class Refused(Exception):
    """The fetched content is not taken: the asset ends ``rejected`` (else ``error``)."""


class AssetImports:
    """This API instance's fetches of URL assets, one task each."""

    def __init__(self, ctx: AppContext):
        self._ctx = ctx
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, asset_id: str) -> None:
        if asset_id not in self._tasks:
            task = asyncio.create_task(self._run(asset_id), name=f"asset-import-{asset_id}")
            self._tasks[asset_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(asset_id, None))

    async def resume(self) -> int:
        """Fetch again every URL asset that no fetch finished (an instance stopped)."""
        async with self._ctx.db.session() as session:
            left = (
                await session.exec(
                    select(Asset.id).where(
                        Asset.status == AssetStatus.UPLOADED,
                        Asset.source_url != None,  # noqa: E711  (SQL: IS NOT NULL)
                    )
                )
            ).all()
        for asset_id in left:
            self.start(asset_id)
        return len(left)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, asset_id: str) -> None:
        async with self._ctx.db.session() as session:
            asset = await session.get(Asset, asset_id)
        if asset is None or asset.status != AssetStatus.UPLOADED or not asset.source_url:
            return
        status, reason, digest, size = AssetStatus.READY, "", None, 0
        try:
            digest, size = await self._fetch(asset)
        except Refused as exc:
            status, reason = AssetStatus.REJECTED, str(exc)
        except BlockedAddress as exc:
            status, reason = AssetStatus.ERROR, f"the URL may not be fetched: {exc}"
        except httpx.HTTPError as exc:
            status, reason = AssetStatus.ERROR, f"fetching the URL failed: {exc!r}"
        except asyncio.CancelledError:
            raise  # the instance stops: the asset stays uploaded, and is fetched again
        except Exception as exc:  # the broker or the spool: said, not swallowed
            log.exception("importing asset %s failed", asset_id)
            status, reason = AssetStatus.ERROR, f"storing the asset failed: {exc!r}"
        async with self._ctx.db.session() as session:
            current = await session.get(Asset, asset_id)
            if current is None or current.status != AssetStatus.UPLOADED:
                if digest is not None:  # deleted meanwhile: what was stored for it goes too
                    from api.routes.assets import release_content

                    await release_content(session, self._ctx.broker, digest)
                log.info("asset %s was deleted while it was fetched: nothing kept", asset_id)
                return
            current.status, current.status_details = status, reason[:2000]
            if digest is not None:
                current.sha256, current.size_bytes = digest, size
            current.updated_at = time.time()
            session.add(current)
            await session.commit()
        log.info("asset %s from its URL: %s %s", asset_id, status, reason)

    async def _fetch(self, asset: Asset) -> tuple[str, int]:
        """Stream the URL into the object store: the content's sha256 and size."""
        from api.routes.assets import validate_content

        settings = self._ctx.settings
        limit = settings.asset_max_bytes
        spool = settings.data_dir / "asset-uploads"
        spool.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=spool, prefix=f"{asset.id}.{os.getpid()}.url.")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:  # closed on every way out
                digest, size = await self._download(asset, f, limit)
            if asset.expected_size is not None and size != asset.expected_size:
                raise Refused(
                    f"the content is {size} bytes, not the {asset.expected_size} declared"
                )
            if asset.expected_sha256 is not None and digest != asset.expected_sha256:
                raise Refused(
                    f"the content's sha256 is {digest}, not the {asset.expected_sha256} declared"
                )
            if not asset.skip_validation:
                why = await asyncio.to_thread(validate_content, asset, path, size)
                if why is not None:
                    raise Refused(why)
            await store_content(self._ctx.broker, digest, path)
            return digest, size
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _download(self, asset: Asset, f: BinaryIO, limit: int) -> tuple[str, int]:
        hasher = hashlib.sha256()
        size = 0
        async with guarded_client(
            allow_private=self._ctx.settings.asset_url_allow_private,
            timeout=_TIMEOUT,
            follow_redirects=True,
            max_redirects=5,
        ) as client:
            assert asset.source_url is not None
            async with client.stream("GET", asset.source_url) as resp:
                if resp.status_code != 200:
                    raise Refused(f"the URL answered {resp.status_code}, not 200")
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise Refused(f"the URL's content is {declared} bytes: over {limit}")
                async for chunk in resp.aiter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise Refused(f"the URL's content runs past {limit} bytes")
                    await asyncio.to_thread(_write, f, hasher, chunk)
        return hasher.hexdigest(), size


def _write(f: BinaryIO, hasher: Any, data: bytes) -> None:
    hasher.update(data)
    f.write(data)
