"""The local secret store: values in the Berth database, encrypted with AES-GCM.

The 256-bit key comes from ``BERTH_SECRET_KEY`` (URL-safe base64) or from a key
file made on first use with mode 0600 (``<data_dir>/secret.key``). Each value is
sealed with a fresh 96-bit nonce and bound to its kind and key as associated
data, so a ciphertext copied onto another row does not decrypt.

A check row sealed with the key tells at start-up whether the key is the one
the database was written with: a wrong key refuses to start instead of
returning garbage. ``rotate`` re-seals every row under a new key in one
transaction (docs/secrets.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import time
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from shared.db import Database
from shared.models import StoredSecret
from shared.stores.base import Kind, Stored, StoreError

__all__ = ["KeyMismatch", "LocalStore", "decode_key", "encode_key", "key_id", "load_key"]

_CHECK_KIND = "_check"
_CHECK_KEY = "_check"
_CHECK_PLAINTEXT = b"berth local secret store v1"


class KeyMismatch(StoreError):
    code = "secret_key_mismatch"


def key_id(key: bytes) -> str:
    """A short fingerprint that names a key without revealing it."""
    return hashlib.sha256(b"berth-secret-key-id:" + key).hexdigest()[:12]


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def decode_key(text: str) -> bytes:
    text = text.strip()
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the secret key is not URL-safe base64") from exc
    if len(key) != 32:
        raise ValueError(f"the secret key must be 32 bytes (256 bits), not {len(key)}")
    return key


def load_key(env_value: str | None, key_file: Path) -> bytes:
    """The key from the environment, else from ``key_file`` (made, 0600, if absent)."""
    if env_value:
        return decode_key(env_value)
    if key_file.exists():
        if key_file.stat().st_mode & 0o077:
            raise ValueError(f"{key_file} is readable by others: chmod 600 it")
        return decode_key(key_file.read_text())
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(encode_key(key) + "\n")
    return key


def _aad(kind: str, key: str) -> bytes:
    return f"berth:{kind}:{key}".encode()


class LocalStore:
    """A :class:`~shared.stores.base.SecretStore` in the Berth database."""

    name = "local"

    def __init__(self, db: Database, key: bytes):
        self._db = db
        self._set_key(key)

    def _set_key(self, key: bytes) -> None:
        self._aes = AESGCM(key)
        self.key_id = key_id(key)

    def _seal(self, kind: str, key: str, plaintext: bytes) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(12)
        return nonce, self._aes.encrypt(nonce, plaintext, _aad(kind, key))

    def _open(self, row: StoredSecret) -> bytes:
        try:
            return self._aes.decrypt(row.nonce, row.ciphertext, _aad(row.kind, row.key))
        except InvalidTag:
            raise KeyMismatch(
                f"{row.kind} {row.key!r} does not decrypt with key {self.key_id} (it was sealed "
                f"with key {row.key_id}): was the key rotated while this process ran? Restart it"
            ) from None

    async def open(self) -> LocalStore:
        """Check the key against the database (first use: record it). Refuses a wrong key."""
        async with self._db.session() as session:
            check = await self._row(session, _CHECK_KIND, _CHECK_KEY)
            if check is None:
                nonce, sealed = self._seal(_CHECK_KIND, _CHECK_KEY, _CHECK_PLAINTEXT)
                now = time.time()
                session.add(
                    StoredSecret(
                        kind=_CHECK_KIND,
                        key=_CHECK_KEY,
                        nonce=nonce,
                        ciphertext=sealed,
                        key_id=self.key_id,
                        created_at=now,
                        updated_at=now,
                    )
                )
                try:
                    await session.commit()
                    return self
                except IntegrityError:  # another instance starting beside us recorded its key
                    await session.rollback()
                    check = await self._row(session, _CHECK_KIND, _CHECK_KEY)
                    assert check is not None
        try:
            ok = self._open(check) == _CHECK_PLAINTEXT
        except KeyMismatch:
            ok = False
        if not ok:
            raise KeyMismatch(
                f"the secret key (id {self.key_id}) is not the one this database's secrets were "
                f"sealed with (id {check.key_id}); set BERTH_SECRET_KEY or restore the key file. "
                "Refusing to start rather than return garbage"
            )
        return self

    @staticmethod
    async def _row(session: object, kind: str, key: str) -> StoredSecret | None:
        stmt = select(StoredSecret).where(StoredSecret.kind == kind, StoredSecret.key == key)
        return (await session.exec(stmt)).first()  # type: ignore[attr-defined,no-any-return]

    def _stored(self, row: StoredSecret) -> Stored:
        return Stored(
            key=row.key,
            data=orjson.loads(self._open(row)),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    async def create(self, kind: Kind, key: str, data: dict[str, str]) -> Stored | None:
        async with self._db.session() as session:
            if await self._row(session, kind, key) is not None:
                return None
            nonce, sealed = self._seal(kind, key, orjson.dumps(data))
            now = time.time()
            row = StoredSecret(
                kind=kind,
                key=key,
                nonce=nonce,
                ciphertext=sealed,
                key_id=self.key_id,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            await session.commit()
            return Stored(key=key, data=data, created_at=now, updated_at=now)

    async def update(self, kind: Kind, key: str, data: dict[str, str]) -> Stored | None:
        async with self._db.session() as session:
            row = await self._row(session, kind, key)
            if row is None:
                return None
            row.nonce, row.ciphertext = self._seal(kind, key, orjson.dumps(data))
            row.key_id = self.key_id
            row.updated_at = time.time()
            session.add(row)
            await session.commit()
            return Stored(key=key, data=data, created_at=row.created_at, updated_at=row.updated_at)

    async def get(self, kind: Kind, key: str) -> Stored | None:
        async with self._db.session() as session:
            row = await self._row(session, kind, key)
        return None if row is None else self._stored(row)

    async def list(self, kind: Kind) -> list[str]:
        async with self._db.session() as session:
            stmt = select(StoredSecret.key).where(StoredSecret.kind == kind)
            return sorted((await session.exec(stmt)).all())

    async def delete(self, kind: Kind, key: str) -> bool:
        async with self._db.session() as session:
            row = await self._row(session, kind, key)
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
            return True

    async def rotate(self, new_key: bytes) -> int:
        """Re-seal every row (and the check row) under ``new_key``, in one transaction.

        Returns how many items were re-sealed. Other processes holding the old key
        must restart afterwards; they refuse to start with the old key.
        """
        new = LocalStore(self._db, new_key)
        async with self._db.session() as session:
            rows = (await session.exec(select(StoredSecret))).all()
            for row in rows:
                plaintext = self._open(row)
                row.nonce, row.ciphertext = new._seal(row.kind, row.key, plaintext)
                row.key_id = new.key_id
                session.add(row)
            await session.commit()
        self._set_key(new_key)
        return sum(1 for row in rows if row.kind != _CHECK_KIND)

    async def close(self) -> None:
        return None
