"""What the sync and the async client share: where the API is, how each call is made,
how an answer becomes a model or an exception, and when a call may be tried again.

A call is described once (:class:`Call`) and carried out by either client, so the two
cannot disagree on a path, a header or a rule.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from berth.sdk.errors import BerthError, ConnectionFailed, RateLimited, Unavailable, error_for

__all__ = ["Call", "Settings", "backoff", "check", "poll_interval", "retryable", "sse_events"]

T = TypeVar("T")

# Seconds between tries of a retried call: exponential from BASE, jittered, capped.
BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0
# Longest wait a Retry-After may impose before the SDK gives up instead.
RETRY_AFTER_CAP = 30.0


@dataclass(slots=True)
class Call(Generic[T]):
    """One HTTP call and what its answer means.

    ``safe``: the call may be sent again after a failure (it changes nothing, or it
    carries an idempotency key the server deduplicates on).
    """

    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    safe: bool = False
    timeout: float | None = None


class Settings:
    """Where the API is and who calls it: given, else ``BERTH_URL`` / ``BERTH_TOKEN``, else
    what ``berth up`` wrote in the data directory (``BERTH_DATA_DIR``)."""

    def __init__(self, url: str | None, token: str | None, timeout: float | None, retries: int):
        data_dir = data_directory()
        url = url or os.environ.get("BERTH_URL") or _read(data_dir / "api-url")
        if not url:
            raise ValueError("no Berth API given: pass url=, or set BERTH_URL, or run `berth up`")
        self.url = url.rstrip("/")
        self.token = (
            token
            if token is not None
            else os.environ.get("BERTH_TOKEN") or _read(data_dir / "admin-token")
        )
        self.timeout = timeout
        self.retries = retries

    def headers(self) -> dict[str, str]:
        out = {"user-agent": "berth-python"}
        if self.token:
            out["authorization"] = f"Bearer {self.token}"
        return out

    def api(self, path: str) -> str:
        return f"{self.url}{path}"

    def endpoint(self, endpoint: str, path: str = "") -> str:
        """An endpoint's URL from its name, or the URL itself when given one."""
        if endpoint.startswith(("http://", "https://")):
            base = endpoint.rstrip("/")
        else:
            base = f"{self.url}/e/{quote(endpoint, safe='')}"
        if path and not path.startswith("/"):
            path = "/" + path
        return base + path


def data_directory() -> Path:
    """Where ``berth up`` keeps its state (and writes the API's URL and admin token)."""
    if os.environ.get("BERTH_DATA_DIR"):
        return Path(os.environ["BERTH_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "berth"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def new_idempotency_key() -> str:
    return f"berth-sdk-{uuid.uuid4()}"


def check(resp: httpx.Response) -> httpx.Response:
    """The answer itself, or the exception it means."""
    if resp.status_code < 400:
        return resp
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    raise error_for(
        resp.status_code, body, resp.headers.get("x-user-request-id"), retry_after(resp)
    )


def retry_after(resp: httpx.Response) -> float | None:
    """The answer's ``Retry-After`` in seconds (a number or an HTTP date), if any."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def transport_error(exc: httpx.HTTPError) -> ConnectionFailed:
    return ConnectionFailed(f"{type(exc).__name__}: {exc}")


def retryable(call: Call[Any], exc: BaseException) -> bool:
    """Whether ``call`` may be sent again after ``exc``.

    Any call: a connection never made (nothing reached the server), or a 429 (the queue
    refused it). A safe call also: a connection lost before the answer, and a 503.
    """
    if isinstance(exc, ConnectionFailed):
        cause = exc.__cause__
        if isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return True
        return call.safe
    if isinstance(exc, RateLimited):
        return exc.retry_after is None or exc.retry_after <= RETRY_AFTER_CAP
    if isinstance(exc, Unavailable):
        return call.safe and (exc.retry_after is None or exc.retry_after <= RETRY_AFTER_CAP)
    return False


def backoff(attempt: int, exc: BaseException | None) -> float:
    """Seconds before try number ``attempt + 1``: the server's Retry-After when it gave
    one, else exponential back-off with full jitter."""
    if isinstance(exc, BerthError) and exc.retry_after is not None:
        return exc.retry_after
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def json_or_text(resp: httpx.Response) -> Any:
    """A model's answer: JSON when it says so, else text (bytes for binary)."""
    kind = resp.headers.get("content-type", "")
    if "json" in kind:
        return resp.json()
    if kind.startswith("text/") or not resp.content:
        return resp.text
    return resp.content


def sse_data(lines: list[str]) -> Any:
    """One server-sent event's ``data`` (JSON-decoded when it is JSON)."""
    import json

    data = "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))
    try:
        return json.loads(data)
    except ValueError:
        return data


UPLOAD_CHUNK = 256 * 1024


def chunks(data: bytes, progress: Callable[[int, int], None]) -> Iterator[bytes]:
    """``data`` in pieces, ``progress(sent, total)`` after each (an upload's progress)."""
    total = len(data)
    for start in range(0, total, UPLOAD_CHUNK):
        piece = data[start : start + UPLOAD_CHUNK]
        yield piece
        progress(start + len(piece), total)


async def achunks(data: bytes, progress: Callable[[int, int], None]) -> AsyncIterator[bytes]:
    for piece in chunks(data, progress):
        yield piece


def poll_interval(tries: int) -> float:
    """Seconds between polls of a job or an endpoint: quick at first, then every 2 s."""
    return min(2.0, 0.05 * 1.6**tries)


class SseParser:
    """Server-sent events from lines: :meth:`feed` returns an event's data at its blank
    line (:data:`NO_EVENT` otherwise)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def feed(self, line: str) -> Any:
        if line:
            self.lines.append(line)
            return NO_EVENT
        lines, self.lines = self.lines, []
        if not any(x.startswith("data:") for x in lines):
            return NO_EVENT  # a comment or a keep-alive
        return sse_data(lines)


NO_EVENT = object()


# The last event of a stream (OpenAI's convention, which Berth's model server follows).
DONE = "[DONE]"


def sse_events(lines: Iterable[str]) -> Iterator[Any]:
    parser = SseParser()
    for line in lines:
        data = parser.feed(line)
        if data == DONE:
            return
        if data is not NO_EVENT:
            yield data
    data = parser.feed("")  # a last event without its blank line
    if data is not NO_EVENT and data != DONE:
        yield data


async def asse_events(lines: AsyncIterable[str]) -> AsyncIterator[Any]:
    parser = SseParser()
    async for line in lines:
        data = parser.feed(line)
        if data == DONE:
            return
        if data is not NO_EVENT:
            yield data
    data = parser.feed("")
    if data is not NO_EVENT and data != DONE:
        yield data
