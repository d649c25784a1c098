"""``berth api``: the HTTP API server."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from api.http import ApiHttpProtocol
from shared.runner import configure_logging
from shared.settings import ApiSettings


def main(settings: ApiSettings | None = None) -> None:
    settings = settings or ApiSettings()
    configure_logging(settings.log_level, "api")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=ApiHttpProtocol,
        access_log=False,
        # Nothing reads the caller's address, so X-Forwarded-For need not be parsed.
        proxy_headers=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()
