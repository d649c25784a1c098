"""Pure ASGI middlewares: request ids on every response, and host-based endpoint routing."""

from __future__ import annotations

import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.names import ENDPOINT_NAME_RE

__all__ = ["HostRouting", "RequestId", "new_request_id", "with_request_id"]


def new_request_id() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` writes it, without the UUID object."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class RequestId:
    """Gives each request an id (``request.state.request_id``) and returns it as ``X-User-Request-ID``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, with_request_id(scope, send)[1])


def with_request_id(scope: Scope, send: Send) -> tuple[tuple[bytes, bytes], Send]:
    """A new request id in ``scope["state"]``: its response header, and ``send`` adding it."""
    request_id = new_request_id()
    scope.setdefault("state", {})["request_id"] = request_id
    header = (b"x-user-request-id", request_id.encode())

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), header]
        await send(message)

    return header, send_with_id


class HostRouting:
    """``<endpoint>.<domain>/<path>`` is served as ``/e/<endpoint>/<path>``."""

    def __init__(self, app: ASGIApp, domain: str):
        self.app = app
        self.suffix = "." + domain.lower().strip(".")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = ""
            for key, value in scope["headers"]:
                if key == b"host":
                    host = value.decode("latin-1").lower().rsplit(":", 1)[0]
                    break
            if host.endswith(self.suffix):
                name = host[: -len(self.suffix)]
                if ENDPOINT_NAME_RE.match(name):
                    path = f"/e/{name}{scope['path']}"
                    scope = dict(scope, path=path, raw_path=path.encode())
        await self.app(scope, receive, send)
