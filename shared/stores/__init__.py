"""Secret stores: Vault (hvac) when ``BERTH_VAULT_ADDR`` is set, else the local encrypted store."""

from __future__ import annotations

from pydantic import SecretStr

from shared.db import Database
from shared.settings import ApiSettings
from shared.stores.base import (
    Kind,
    SecretStore,
    Stored,
    StoreError,
    StoreForbidden,
    StoreSealed,
    StoreUnavailable,
)

__all__ = [
    "Kind",
    "SecretStore",
    "StoreError",
    "StoreForbidden",
    "StoreSealed",
    "StoreUnavailable",
    "Stored",
    "open_store",
]


async def open_store(settings: ApiSettings, db: Database) -> SecretStore:
    """The store the settings name, checked and ready (a wrong local key raises here)."""
    if settings.vault_addr:
        from shared.stores.vault import VaultConfig, VaultStore

        role_id, secret_id = settings.vault_role_id, settings.vault_secret_id
        if settings.vault_role_id_file:
            role_id = settings.vault_role_id_file.read_text().strip()
        if settings.vault_secret_id_file:
            secret_id = SecretStr(settings.vault_secret_id_file.read_text().strip())
        return VaultStore(
            VaultConfig(
                addr=settings.vault_addr,
                token=settings.vault_token.get_secret_value() if settings.vault_token else None,
                role_id=role_id,
                secret_id=secret_id.get_secret_value() if secret_id else None,
                approle_mount=settings.vault_approle_mount,
                mount=settings.vault_mount,
                prefix=settings.vault_prefix,
                namespace=settings.vault_namespace,
                ca_cert=settings.vault_ca_cert,
                timeout=settings.vault_timeout,
            )
        )
    from shared.stores.local import LocalStore, load_key

    key = load_key(
        settings.secret_key.get_secret_value() if settings.secret_key else None,
        settings.resolved_secret_key_file(),
    )
    return await LocalStore(db, key).open()
