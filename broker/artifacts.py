"""Python model folders as content-addressed archives in the JetStream object store.

``berth deploy ./dir`` uploads a tar.gz once; any agent, on any host, fetches
it by digest and unpacks it into its cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nats.js.errors import ObjectNotFoundError

from broker.connection import Broker
from shared import names
from shared.errors import BodyTooLarge, InvalidRequest, NotFound
from shared.packing import pack_dir
from shared.settings import CommonSettings

__all__ = [
    "ArchiveLimits",
    "ArchiveTooLarge",
    "ModelCache",
    "fetch_model",
    "inspect_archive",
    "model_exists",
    "pack_dir",
    "store_model",
]

MAX_ARCHIVE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """What one model archive may unpack to (413 past any of them)."""

    max_unpacked: int = 2 * 1024 * 1024 * 1024
    max_members: int = 20_000
    # Unpacked bytes per archive byte; text and code compress about 5:1, weights 1:1.
    max_ratio: float = 200.0

    @classmethod
    def of(cls, settings: CommonSettings) -> ArchiveLimits:
        return cls(
            settings.model_max_unpacked, settings.model_max_members, settings.model_max_ratio
        )


class ArchiveTooLarge(BodyTooLarge):
    code = "archive_too_large"


def inspect_archive(archive: bytes, limits: ArchiveLimits = ArchiveLimits()) -> None:
    """Refuse what must never be unpacked: members outside the folder (absolute, ``..``),
    links, devices and FIFOs (422 naming the member), and archives that unpack past
    the limits (413). Reads the archive as a stream and judges each member by its
    header before its data is decompressed, so a bomb is refused after its first lie;
    it is CPU work: call it off the event loop."""
    total = members = 0
    seen_service = False
    budget = min(limits.max_unpacked, int(max(len(archive), 1) * limits.max_ratio))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r|gz") as tar:
            for member in tar:
                members += 1
                if members > limits.max_members:
                    raise ArchiveTooLarge(
                        f"model archive has more than {limits.max_members} members"
                    )
                name = member.name
                parts = PurePosixPath(name).parts
                if name.startswith(("/", "\\")) or ".." in parts or "\\" in name or ":" in name:
                    raise InvalidRequest(
                        f"model archive member {name!r} points outside the model folder"
                    )
                if not (member.isreg() or member.isdir()):
                    kind = (
                        "a symbolic link"
                        if member.issym()
                        else "a hard link"
                        if member.islnk()
                        else "a device or FIFO"
                    )
                    raise InvalidRequest(
                        f"model archive member {name!r} is {kind}: only files and folders"
                    )
                total += member.size
                if total > budget:
                    raise ArchiveTooLarge(
                        f"model archive unpacks to more than {budget} bytes (at most "
                        f"{limits.max_unpacked}, and {limits.max_ratio:g} times its size)"
                    )
                if PurePosixPath(name) == PurePosixPath("service.py") and member.isreg():
                    seen_service = True
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise InvalidRequest(f"model archive is not a valid tar.gz: {exc}") from exc
    if not seen_service:
        raise InvalidRequest("model archive has no service.py at its top level")


async def store_model(
    broker: Broker, archive: bytes, limits: ArchiveLimits = ArchiveLimits()
) -> str:
    """Store an archive; returns its id ``sha256:<hex>`` (idempotent). The archive is
    checked off the event loop first (:func:`inspect_archive`)."""
    await asyncio.to_thread(inspect_archive, archive, limits)
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


async def fetch_model(
    broker: Broker, model_id: str, cache_dir: Path, limits: ArchiveLimits = ArchiveLimits()
) -> Path:
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
    await asyncio.to_thread(_unpack, model_id, data, target, limits)
    return target


def extract(tar: tarfile.TarFile, into: Path) -> None:
    """Unpack an archive :func:`inspect_archive` passed (files and folders only) as
    Python's "data" filter does: no owner kept, no setuid, setgid or sticky bit, nothing
    writable by group or others. Python has the filter from 3.11.4 on; before (Debian
    12's 3.11.2), the same is done to each member by hand."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, filter="data")
        return
    members = tar.getmembers()
    for member in members:
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
        member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
    tar.extractall(into, members=members)


def _unpack(model_id: str, data: bytes, target: Path, limits: ArchiveLimits) -> None:
    if "sha256:" + hashlib.sha256(data).hexdigest() != model_id:
        raise InvalidRequest(f"model {model_id} failed its digest check")
    inspect_archive(data, limits)  # stored before these checks existed, perhaps
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            extract(tar, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "service.py").exists():  # not a concurrent winner: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ModelCache:
    """An agent's unpacked models; one download per model however many replicas start at once.

    A model is unpacked while a replica of this agent uses it, and removed ``keep``
    seconds after the last one ends (a scaled-to-zero endpoint called again soon finds
    it still there).
    """

    def __init__(
        self,
        broker: Broker,
        cache_dir: Path,
        *,
        keep: float = 600.0,
        limits: ArchiveLimits = ArchiveLimits(),
    ):
        self._broker = broker
        self._dir = cache_dir
        self._keep = keep
        self._limits = limits
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._removals: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, model_id: str) -> Path:
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            return await fetch_model(self._broker, model_id, self._dir, self._limits)

    async def acquire(self, model_id: str) -> Path:
        """The model's folder, held until :meth:`release`: it is not removed meanwhile."""
        self._users[model_id] = self._users.get(model_id, 0) + 1
        removal = self._removals.pop(model_id, None)
        if removal is not None:
            removal.cancel()
        try:
            return await self.get(model_id)
        except BaseException:
            self.release(model_id)
            raise

    def release(self, model_id: str) -> None:
        left = self._users.get(model_id, 0) - 1
        if left > 0:
            self._users[model_id] = left
            return
        self._users.pop(model_id, None)
        loop = asyncio.get_running_loop()
        self._removals[model_id] = loop.call_later(self._keep, self._remove, model_id)

    def in_use(self, model_id: str) -> bool:
        return model_id in self._users

    def _remove(self, model_id: str) -> None:
        self._removals.pop(model_id, None)
        if model_id in self._users:
            return
        task = asyncio.ensure_future(self._remove_now(model_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove_now(self, model_id: str) -> None:
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            if model_id not in self._users:
                target = self._dir / model_id.replace(":", "-")
                await asyncio.to_thread(shutil.rmtree, target, True)

    async def purge(self) -> None:
        """Remove every unpacked model nobody holds (an agent starting: none is)."""
        if not self._dir.exists():
            return
        for entry in list(self._dir.iterdir()):
            if entry.name.replace("-", ":", 1) not in self._users:
                await asyncio.to_thread(shutil.rmtree, entry, True)

    def close(self) -> None:
        for handle in self._removals.values():
            handle.cancel()
        self._removals.clear()
