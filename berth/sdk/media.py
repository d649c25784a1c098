"""OctoAI's media convention: a file travels as ``{"data": "<base64>"}`` (or, from a model,
``{"data": {"url": ...}}``). These turn files and bytes into that form and back."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

__all__ = ["from_media", "to_media"]


def to_media(source: bytes | str | Path) -> dict[str, str]:
    """``{"data": base64}`` of raw bytes, or of a file's contents (a path)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return {"data": base64.b64encode(data).decode("ascii")}


def from_media(media: Any) -> bytes:
    """The bytes of a ``{"data": base64}`` value (or of a bare base64 string)."""
    if isinstance(media, dict):
        media = media.get("data")
    if isinstance(media, dict):
        raise ValueError("this media is a URL ({'data': {'url': ...}}): fetch it yourself")
    if not isinstance(media, str):
        raise ValueError(f"not media: {type(media).__name__}")
    return base64.b64decode(media, validate=True)
