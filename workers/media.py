"""Media on the wire, OctoAI's way: ``{"data": "<base64>"}`` or ``{"data": {"url": "…"}}``.

A model annotates an input as :class:`Media` and reads its bytes; it returns
``Media.of(bytes)`` (or its dict) for an image or a sound. Part of Berth's model
server (``berth build`` copies it into images), so it needs nothing but pydantic.
"""

from __future__ import annotations

import base64
import binascii
import urllib.request

from pydantic import BaseModel, Field

from workers.service import InvalidInput

__all__ = ["Media", "MediaUrl"]

# What one media input may hold, decoded: more is refused (bytes read from a URL too).
MAX_MEDIA_BYTES = 32 * 1024 * 1024


class MediaUrl(BaseModel):
    url: str = Field(description="http(s) address the model fetches the media from")


class Media(BaseModel):
    """An image, a sound or any file: base64 inline, or a URL the model fetches."""

    data: str | MediaUrl = Field(description="base64 of the file, or {url}")

    def content(self, limit: int = MAX_MEDIA_BYTES) -> bytes:
        """The media's bytes; InvalidInput for bad base64, a bad URL or too many bytes."""
        if isinstance(self.data, MediaUrl):
            url = self.data.url
            if not url.startswith(("http://", "https://")):
                raise InvalidInput("a media url must be http:// or https://")
            with urllib.request.urlopen(url, timeout=30) as resp:
                raw: bytes = resp.read(limit + 1)
        else:
            if len(self.data) > limit * 4 // 3 + 4:
                raise InvalidInput(f"media over {limit} bytes")
            try:
                raw = base64.b64decode(self.data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(f"media data is not base64: {exc}") from exc
        if len(raw) > limit:
            raise InvalidInput(f"media over {limit} bytes")
        return raw

    @classmethod
    def of(cls, raw: bytes) -> Media:
        return cls(data=base64.b64encode(raw).decode("ascii"))
