"""``berth api``: the HTTP API server."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from api.http import ApiHttpProtocol, check_uvicorn
from shared.runner import configure_logging
from shared.settings import ApiSettings
from workers import tracing


def server_config(settings: ApiSettings) -> uvicorn.Config:
    """uvicorn serving the API: uvloop, httptools under Berth's own protocol (api/http.py).

    The app is served unwrapped (no proxy-headers middleware: nothing reads the
    caller's address), so the protocol finds the data plane's direct entry on it.
    An uvicorn whose private names the protocol relies on changed stops it here.
    """
    check_uvicorn()
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=ApiHttpProtocol,
        access_log=False,
        proxy_headers=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def main(settings: ApiSettings | None = None) -> None:
    settings = settings or ApiSettings()
    configure_logging(settings.log_level, "api", settings.log_format)
    tracing.configure("berth-api")
    uvicorn.Server(server_config(settings)).run()
