"""The secret-store interface: secrets and registry credentials, behind one shape.

Two stores implement it: :mod:`shared.stores.vault` (HashiCorp Vault KV v2, via
hvac) and :mod:`shared.stores.local` (the Berth database, AES-GCM at rest). The
API is the only process that talks to a store; agents get the values of their
own replicas through a sealed NATS request (:mod:`shared.sealed`).

Values never appear in an error message, a log line or a ``repr``: errors name
the store, the kind and the key, nothing more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from shared.errors import BerthError

__all__ = [
    "SECRET_KEY_RE",
    "Kind",
    "SecretStore",
    "StoreError",
    "StoreForbidden",
    "StoreSealed",
    "StoreUnavailable",
    "Stored",
]

# A secret's key becomes the name of an environment variable in its replicas.
SECRET_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# A registry credential's key is a name, referred to by endpoints.
CREDENTIAL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# A webhook signing secret belongs to an endpoint or a token: ``endpoint.<name>``, ``token.<id>``.
WEBHOOK_KEY_RE = re.compile(r"^(endpoint|token)\.[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Kind(StrEnum):
    SECRET = "secret"
    REGISTRY = "registry"
    WEBHOOK = "webhook"

    def key_re(self) -> re.Pattern[str]:
        if self is Kind.SECRET:
            return SECRET_KEY_RE
        return CREDENTIAL_KEY_RE if self is Kind.REGISTRY else WEBHOOK_KEY_RE


@dataclass(slots=True)
class Stored:
    """One stored item: ``data`` is ``{"value"}`` for a secret, ``{"username", "password"}``
    for a registry credential. ``repr`` never shows it."""

    key: str
    data: dict[str, str] = field(repr=False)
    created_at: float
    updated_at: float


class StoreError(BerthError):
    """The store could not do what was asked; the message says why, never a value."""

    status_code = 503
    code = "secret_store_unavailable"


class StoreUnavailable(StoreError):
    pass


class StoreSealed(StoreError):
    code = "secret_store_sealed"


class StoreForbidden(StoreError):
    """The store refused Berth's own credentials: a policy problem, not the caller's."""

    code = "secret_store_forbidden"


class SecretStore(Protocol):
    """Keys are unique per kind. ``create`` refuses an existing key; ``update`` a missing one."""

    name: str

    async def create(self, kind: Kind, key: str, data: dict[str, str]) -> Stored | None:
        """The new item, or None if the key exists already."""
        ...

    async def update(self, kind: Kind, key: str, data: dict[str, str]) -> Stored | None:
        """The updated item, or None if there is no such key."""
        ...

    async def get(self, kind: Kind, key: str) -> Stored | None: ...

    async def list(self, kind: Kind) -> list[str]:
        """Keys, sorted."""
        ...

    async def delete(self, kind: Kind, key: str) -> bool: ...

    async def close(self) -> None: ...
