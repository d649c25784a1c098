"""Sealed boxes: a payload only the holder of an ephemeral private key can open.

An agent asking for its replica's secrets sends a fresh X25519 public key; the
API answers with the payload encrypted under a key agreed with its own fresh
key pair (HKDF-SHA256, AES-256-GCM). So secret values never cross NATS in the
clear, and nothing that records NATS traffic (a monitor, a trace, a stream by
mistake) can read them.
"""

from __future__ import annotations

import base64
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["Opener", "SealError", "seal"]

_INFO = b"berth sealed box v1"


class SealError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise SealError("not base64") from exc


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key(private: X25519PrivateKey, peer: X25519PublicKey, salt: bytes) -> bytes:
    shared = private.exchange(peer)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(shared)


def seal(recipient_public_b64: str, plaintext: bytes) -> dict[str, str]:
    """Encrypt ``plaintext`` for the holder of the private half of ``recipient_public_b64``."""
    try:
        peer = X25519PublicKey.from_public_bytes(_unb64(recipient_public_b64))
    except ValueError as exc:
        raise SealError("not an X25519 public key") from exc
    ours = X25519PrivateKey.generate()
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    box = AESGCM(_key(ours, peer, salt)).encrypt(nonce, plaintext, _INFO)
    return {
        "public_key": _b64(_raw(ours.public_key())),
        "salt": _b64(salt),
        "nonce": _b64(nonce),
        "box": _b64(box),
    }


class Opener:
    """One ephemeral key pair; ``public_key`` goes with the request, ``open`` reads the answer."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.public_key = _b64(_raw(self._private.public_key()))

    def open(self, sealed: dict[str, str]) -> bytes:
        try:
            peer = X25519PublicKey.from_public_bytes(_unb64(sealed["public_key"]))
            key = _key(self._private, peer, _unb64(sealed["salt"]))
            return AESGCM(key).decrypt(_unb64(sealed["nonce"]), _unb64(sealed["box"]), _INFO)
        except (KeyError, ValueError, InvalidTag) as exc:
            raise SealError("the sealed answer does not open with this key") from exc
