"""Python model folders as content-addressed archives in the JetStream object store.

``berth deploy ./dir`` uploads a tar.gz once; any agent, on any host, fetches
it by digest and unpacks it into its cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import tarfile
import tempfile
from pathlib import Path

from nats.js.errors import ObjectNotFoundError

from broker.connection import Broker
from shared import names
from shared.errors import InvalidRequest, NotFound

__all__ = ["ModelCache", "fetch_model", "model_exists", "pack_dir", "store_model"]

MAX_ARCHIVE_BYTES = 256 * 1024 * 1024


def pack_dir(path: Path) -> bytes:
    """A reproducible tar.gz of a model folder (caches and VCS folders left out)."""
    skip = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path)
            if any(part in skip for part in rel.parts) or not file.is_file():
                continue
            info = tar.gettarinfo(str(file), arcname=str(rel))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with file.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def _validate(archive: bytes) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            members = tar.getnames()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidRequest(f"model archive is not a valid tar.gz: {exc}") from exc
    if "service.py" not in members:
        raise InvalidRequest("model archive has no service.py at its top level")


async def store_model(broker: Broker, archive: bytes) -> str:
    """Store an archive; returns its id ``sha256:<hex>`` (idempotent)."""
    _validate(archive)
    model_id = "sha256:" + hashlib.sha256(archive).hexdigest()
    store = await broker.js.object_store(names.OBJ_MODELS)
    key = model_id.replace(":", "-")
    try:
        await store.get_info(key)
    except ObjectNotFoundError:
        await store.put(key, archive)
    return model_id


async def model_exists(broker: Broker, model_id: str) -> bool:
    store = await broker.js.object_store(names.OBJ_MODELS)
    try:
        await store.get_info(model_id.replace(":", "-"))
    except ObjectNotFoundError:
        return False
    return True


async def fetch_model(broker: Broker, model_id: str, cache_dir: Path) -> Path:
    """The unpacked model folder for ``model_id``, downloading it on first use."""
    target = cache_dir / model_id.replace(":", "-")
    if (target / "service.py").exists():
        return target
    store = await broker.js.object_store(names.OBJ_MODELS)
    try:
        result = await store.get(model_id.replace(":", "-"))
    except ObjectNotFoundError as exc:
        raise NotFound(f"model {model_id} is not in the model store") from exc
    data = result.data or b""
    # Hashing and unpacking a large archive would stall every pull loop on this agent.
    await asyncio.to_thread(_unpack, model_id, data, target)
    return target


def _unpack(model_id: str, data: bytes, target: Path) -> None:
    if "sha256:" + hashlib.sha256(data).hexdigest() != model_id:
        raise InvalidRequest(f"model {model_id} failed its digest check")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(staging, filter="data")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "service.py").exists():  # not a concurrent winner: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ModelCache:
    """An agent's unpacked models; one download per model however many replicas start at once."""

    def __init__(self, broker: Broker, cache_dir: Path):
        self._broker = broker
        self._dir = cache_dir
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, model_id: str) -> Path:
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            return await fetch_model(self._broker, model_id, self._dir)
