"""An agent's asset cache against a real nats-server: contents fetched once and checked,
kept under its bound by removing the least recently used that nobody holds, never a held
one, and a start that cannot have its asset told why."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from broker.assets import store_content
from broker.connection import Broker
from shared.messages import AssetRef
from workers.assets import AssetCache, AssetUnavailable, link_assets

MB = 1024 * 1024


async def _stored(broker: Broker, tmp_path: Path, name: str, size: int) -> AssetRef:
    path = tmp_path / f"{name}.src"
    path.write_bytes(os.urandom(size))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    await store_content(broker, digest, path)
    return AssetRef(id=f"asset_{name}", name=name, sha256=digest, size_bytes=size)


async def test_the_cache_fetches_once_evicts_the_least_recently_used_and_keeps_held_ones(
    own_broker: Broker, tmp_path: Path
) -> None:
    a, b, c, d = [await _stored(own_broker, tmp_path, n, MB) for n in "abcd"]
    cache = AssetCache(own_broker, tmp_path / "cache", limit_bytes=int(2.5 * MB))
    reports: list[tuple[str, dict[str, object]]] = []

    async def report(kind: str, details: dict[str, object]) -> None:
        reports.append((kind, details))

    path_a = await cache.acquire(a, report)  # held for the whole test
    assert hashlib.sha256(path_a.read_bytes()).hexdigest() == a.sha256
    assert path_a.stat().st_mode & 0o222 == 0  # read-only
    assert [k for k, _ in reports] == ["asset_fetching", "asset_fetched"]
    await cache.acquire(b)
    cache.release(b.sha256)
    fetched = cache.fetches
    await cache.acquire(a)  # cached: no fetch
    cache.release(a.sha256)
    assert cache.fetches == fetched

    await cache.acquire(c)  # a (held) + b + c is over the bound: b goes, not a
    assert path_a.exists() and not cache.path(b.sha256).exists()
    with pytest.raises(AssetUnavailable, match="does not fit"):
        await cache.acquire(d)  # a and c are held: no room
    assert not cache.held(d.sha256)
    cache.release(c.sha256)
    await cache.acquire(d)  # c is no longer held: it makes room
    assert not cache.path(c.sha256).exists() and path_a.exists()


async def test_an_asset_whose_content_is_gone_fails_with_the_reason(
    own_broker: Broker, tmp_path: Path
) -> None:
    cache = AssetCache(own_broker, tmp_path / "cache", limit_bytes=10 * MB)
    gone = AssetRef(id="asset_gone", name="gone", sha256="0" * 64, size_bytes=10)
    with pytest.raises(AssetUnavailable, match="'gone' could not be fetched"):
        await cache.acquire(gone)
    assert not cache.held(gone.sha256)
    assert not list((tmp_path / "cache").iterdir())  # no partial file left


def test_links_name_each_asset_and_nothing_else(tmp_path: Path) -> None:
    volume, store = tmp_path / "volume", tmp_path / "store"
    store.mkdir()
    (store / "x").write_text("x")
    (store / "y").write_text("y")
    folder = link_assets(volume, {"one": store / "x", "two": store / "y"})
    assert sorted(p.name for p in folder.iterdir()) == ["one", "two"]
    link_assets(volume, {"one": store / "y"})  # the endpoint changed its assets
    assert sorted(p.name for p in folder.iterdir()) == ["one"]
    assert (folder / "one").read_text() == "y"
