"""An agent's asset cache: each asset's content once, by its sha256, read-only.

A replica of an endpoint that names assets holds them for as long as it runs;
a held asset is never removed. A start whose assets are cached fetches nothing.
A fetch reports its progress as events of the replica and is checked against the
digest; the cache stays under ``asset_cache_bytes`` by removing the least recently
used assets nobody holds, and a start that cannot fit fails with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from broker.assets import fetch_content
from broker.connection import Broker
from shared.errors import BerthError
from shared.messages import AssetRef

__all__ = ["AssetCache", "AssetUnavailable", "link_assets"]

Report = Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]]
PROGRESS_EVERY = 1.0  # seconds between progress events of one fetch


class AssetUnavailable(BerthError):
    status_code = 503
    code = "asset_unavailable"


class AssetCache:
    def __init__(self, broker: Broker, cache_dir: Path, limit_bytes: int):
        self._broker = broker
        self._dir = cache_dir
        self._limit = limit_bytes
        self._users: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0  # contents fetched from the store since the agent started

    def path(self, digest: str) -> Path:
        return self._dir / digest

    async def acquire(self, ref: AssetRef, report: Report | None = None) -> Path:
        """The asset's file, held until :meth:`release` (fetched first if not cached)."""
        self._users[ref.sha256] = self._users.get(ref.sha256, 0) + 1
        try:
            async with self._locks.setdefault(ref.sha256, asyncio.Lock()):
                target = self.path(ref.sha256)
                if await asyncio.to_thread(_touch, target):
                    return target
                await self._fetch(ref, target, report)
                return target
        except BaseException:
            self.release(ref.sha256)
            raise

    def release(self, digest: str) -> None:
        left = self._users.get(digest, 0) - 1
        if left > 0:
            self._users[digest] = left
        else:
            self._users.pop(digest, None)

    def held(self, digest: str) -> bool:
        return digest in self._users

    async def _fetch(self, ref: AssetRef, target: Path, report: Report | None) -> None:
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        await self._make_room(ref)
        part = target.with_name(f".{ref.sha256}.part")
        counted = [0]
        started = time.monotonic()
        if report is not None:
            await report("asset_fetching", {"asset": ref.name, "size_bytes": ref.size_bytes})
        fetch = asyncio.ensure_future(fetch_content(self._broker, ref.sha256, part, counted))
        try:
            while not fetch.done():
                await asyncio.wait({fetch}, timeout=PROGRESS_EVERY)
                if not fetch.done() and report is not None:
                    await report(
                        "asset_progress",
                        {"asset": ref.name, "bytes": counted[0], "size_bytes": ref.size_bytes},
                    )
            await fetch
            await asyncio.to_thread(os.chmod, part, 0o444)
            await asyncio.to_thread(part.rename, target)
        except BerthError as exc:
            raise AssetUnavailable(
                f"asset {ref.name!r} could not be fetched: {exc.message}"
            ) from exc
        finally:
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch
            await asyncio.to_thread(part.unlink, missing_ok=True)
        self.fetches += 1
        if report is not None:
            await report(
                "asset_fetched",
                {
                    "asset": ref.name,
                    "size_bytes": ref.size_bytes,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )

    async def _make_room(self, ref: AssetRef) -> None:
        """Remove least recently used contents nobody holds until ``ref`` fits."""
        entries = await asyncio.to_thread(_entries, self._dir)
        used = sum(size for _, size, _ in entries)
        for digest, size, _ in sorted(entries, key=lambda e: e[2]):
            if used + ref.size_bytes <= self._limit:
                break
            if digest in self._users:
                continue
            await asyncio.to_thread((self._dir / digest).unlink, missing_ok=True)
            used -= size
        if used + ref.size_bytes > self._limit:
            raise AssetUnavailable(
                f"asset {ref.name!r} ({ref.size_bytes} bytes) does not fit in this agent's "
                f"asset cache ({self._limit} bytes, {used} held by running replicas)"
            )


def _touch(path: Path) -> bool:
    """Whether ``path`` exists; its time of use is now (least recently used goes first)."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _entries(folder: Path) -> list[tuple[str, int, float]]:
    """(digest, size, last use) of each cached content."""
    found = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
            continue
        st = entry.stat(follow_symlinks=False)
        found.append((entry.name, st.st_size, st.st_mtime))
    return found


def link_assets(volume: Path, files: dict[str, Path]) -> Path:
    """``volume``/assets holding a link per asset name to its cached file (and nothing
    else); the folder."""
    folder = volume / "assets"
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.name not in files and (entry.is_symlink() or entry.is_file()):
            entry.unlink()
    for name, target in files.items():
        link = folder / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        staging = folder / f".{name}.link"
        staging.unlink(missing_ok=True)
        staging.symlink_to(target)
        staging.replace(link)
    return folder
