"""The Vault store: secrets and registry credentials in a KV v2 engine, through hvac.

Layout under the mount (``BERTH_VAULT_MOUNT``, default ``secret``) and the path
prefix (``BERTH_VAULT_PREFIX``, default ``berth``):

    <prefix>/secret/<key>     {"value": ...}
    <prefix>/registry/<key>   {"username": ..., "password": ...}

Auth is a token (``BERTH_VAULT_TOKEN``) or AppRole (``BERTH_VAULT_ROLE_ID`` and
``BERTH_VAULT_SECRET_ID``; logged in again when the token expires). Transient
failures (connection errors, 5xx other than sealed, 429) are retried with
tenacity; a sealed Vault, a refused policy or an unreachable server each end in
their own clear :class:`~shared.stores.base.StoreError`. The least-privilege
policy is ``deploy/vault/berth-policy.hcl``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import hvac
import requests
from hvac import exceptions as hv
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from shared.stores.base import (
    Kind,
    Stored,
    StoreError,
    StoreForbidden,
    StoreSealed,
    StoreUnavailable,
)

__all__ = ["VaultConfig", "VaultStore", "kv_paths"]

T = TypeVar("T")

_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    hv.InternalServerError,
    hv.BadGateway,
    hv.RateLimitExceeded,
)


@dataclass(slots=True)
class VaultConfig:
    addr: str
    token: str | None = None
    role_id: str | None = None
    secret_id: str | None = None
    approle_mount: str = "approle"
    mount: str = "secret"
    prefix: str = "berth"
    namespace: str | None = None
    ca_cert: str | None = None
    timeout: float = 5.0
    # Retries of transient failures: attempts, and the most time spent on them.
    attempts: int = 4
    retry_budget: float = 10.0

    def __repr__(self) -> str:  # never show the token or the secret id
        return f"VaultConfig(addr={self.addr!r}, mount={self.mount!r}, prefix={self.prefix!r})"


def kv_paths(prefix: str) -> dict[Kind, str]:
    """Where each kind lives under the mount (the policy in deploy/ grants exactly these)."""
    base = prefix.strip("/")
    return {kind: f"{base}/{kind.value}" for kind in Kind}


def _time(text: str | None) -> float:
    if not text:
        return 0.0
    # RFC 3339 with nanoseconds: keep microseconds, which fromisoformat reads.
    head, dot, frac = text.rstrip("Z").partition(".")
    stamp = head + (("." + frac[:6]) if dot else "") + "+00:00"
    return datetime.fromisoformat(stamp).timestamp()


class VaultStore:
    """A :class:`~shared.stores.base.SecretStore` on Vault KV v2."""

    name = "vault"

    def __init__(self, config: VaultConfig):
        if not config.token and not (config.role_id and config.secret_id):
            raise ValueError("Vault needs BERTH_VAULT_TOKEN, or BERTH_VAULT_ROLE_ID and _SECRET_ID")
        self._config = config
        self._paths = kv_paths(config.prefix)
        self._lock = threading.Lock()  # hvac's client is not meant to be shared across threads
        self._client = hvac.Client(
            url=config.addr,
            token=config.token,
            namespace=config.namespace,
            verify=config.ca_cert if config.ca_cert else True,
            timeout=config.timeout,  # type: ignore[arg-type]  # annotated int; takes seconds
        )
        self._retrying = retry(
            retry=retry_if_exception_type(_TRANSIENT),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            stop=stop_after_attempt(config.attempts) | stop_after_delay(config.retry_budget),
            reraise=True,
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _login(self) -> None:
        c = self._config
        self._client.auth.approle.login(
            role_id=c.role_id, secret_id=c.secret_id, mount_point=c.approle_mount
        )

    def _call_sync(self, what: str, fn: Callable[[], T]) -> T:
        with self._lock:
            try:
                if self._config.role_id and not self._client.token:
                    self._retrying(self._login)()
                try:
                    return self._retrying(fn)()
                except hv.Forbidden:
                    if not self._config.role_id:
                        raise
                    self._retrying(self._login)()  # the AppRole token may have expired
                    return self._retrying(fn)()
            except hv.VaultDown as exc:
                raise StoreSealed(f"Vault at {self._config.addr} is sealed ({what})") from exc
            except (hv.Forbidden, hv.Unauthorized) as exc:
                raise StoreForbidden(
                    f"Vault refused Berth's credentials for {what}: check the policy "
                    "(deploy/vault/berth-policy.hcl) and the token or AppRole"
                ) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise StoreUnavailable(
                    f"Vault at {self._config.addr} is unreachable ({what}): {type(exc).__name__}"
                ) from exc
            except hv.VaultError as exc:
                # hvac's message is Vault's error list, which never holds a value we sent.
                raise StoreError(f"Vault failed {what}: {type(exc).__name__}: {exc}") from exc

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        c = self._config
        budget = c.timeout * (c.attempts + 2) + c.retry_budget
        try:
            async with asyncio.timeout(budget):
                return await asyncio.to_thread(self._call_sync, what, fn)
        except TimeoutError:
            raise StoreUnavailable(f"Vault did not answer {what} within {budget:g} s") from None

    def _path(self, kind: Kind, key: str) -> str:
        return f"{self._paths[kind]}/{key}"

    def _metadata(self, path: str) -> dict[str, Any] | None:
        try:
            meta = self._client.secrets.kv.v2.read_secret_metadata(
                path, mount_point=self._config.mount
            )
        except hv.InvalidPath:
            return None
        data: dict[str, Any] = meta["data"]
        return data

    def _read(self, kind: Kind, key: str) -> Stored | None:
        path = self._path(kind, key)
        meta = self._metadata(path)
        if meta is None:
            return None
        try:
            got = self._client.secrets.kv.v2.read_secret_version(
                path, mount_point=self._config.mount, raise_on_deleted_version=True
            )
        except hv.InvalidPath:
            return None
        return Stored(
            key=key,
            data={str(k): str(v) for k, v in got["data"]["data"].items()},
            created_at=_time(meta.get("created_time")),
            updated_at=_time(meta.get("updated_time")),
        )

    # -- the store ---------------------------------------------------------------------------

    async def create(self, kind: Kind, key: str, data: dict[str, str]) -> Stored | None:
        def write() -> Stored | None:
            path = self._path(kind, key)
            try:  # cas=0: written only if the key does not exist yet
                self._client.secrets.kv.v2.create_or_update_secret(
                    path, secret=data, cas=0, mount_point=self._config.mount
                )
            except hv.InvalidRequest as exc:
                if "check-and-set" in str(exc):
                    return None
                raise
            return self._read(kind, key)

        return await self._call(f"create {kind} {key!r}", write)

    async def update(self, kind: Kind, key: str, data: dict[str, str]) -> Stored | None:
        def write() -> Stored | None:
            path = self._path(kind, key)
            meta = self._metadata(path)
            if meta is None:
                return None
            self._client.secrets.kv.v2.create_or_update_secret(
                path,
                secret=data,
                cas=int(meta.get("current_version") or 0),
                mount_point=self._config.mount,
            )
            return self._read(kind, key)

        return await self._call(f"update {kind} {key!r}", write)

    async def get(self, kind: Kind, key: str) -> Stored | None:
        return await self._call(f"read {kind} {key!r}", lambda: self._read(kind, key))

    async def list(self, kind: Kind) -> list[str]:
        def keys() -> list[str]:
            try:
                got = self._client.secrets.kv.v2.list_secrets(
                    self._paths[kind], mount_point=self._config.mount
                )
            except hv.InvalidPath:  # nothing stored yet
                return []
            return sorted(k for k in got["data"]["keys"] if not k.endswith("/"))

        return await self._call(f"list {kind}s", keys)

    async def delete(self, kind: Kind, key: str) -> bool:
        def remove() -> bool:
            path = self._path(kind, key)
            if self._metadata(path) is None:
                return False
            self._client.secrets.kv.v2.delete_metadata_and_all_versions(
                path, mount_point=self._config.mount
            )
            return True

        return await self._call(f"delete {kind} {key!r}", remove)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.adapter.close)
