"""``berth api``: the HTTP API server."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from api.http import GatheringHttpProtocol
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
        http=GatheringHttpProtocol,
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()
