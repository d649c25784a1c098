"""``berth api``: the HTTP API server."""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn

from api.app import BerthApp, create_app
from api.http import ApiHttpProtocol, check_uvicorn
from shared.runner import configure_logging
from shared.settings import ApiSettings
from workers import tracing

log = logging.getLogger(__name__)


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


class DrainingServer(uvicorn.Server):
    """uvicorn, draining first on SIGTERM: for ``drain`` seconds /healthz answers 503 while
    requests (and kept-alive connections) are still served; then uvicorn's own graceful
    stop. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, drain: float, state: Any):
        super().__init__(config)
        self._state = state  # the control plane's app.state, which /healthz reads
        self._drain = drain
        self._drain_until: float | None = None
        self._drain_signal: int = signal.SIGTERM
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it sets fields only (no logging: its lock may be held here).
        if self._drain > 0 and self._drain_until is None and sig == signal.SIGTERM:
            self._drain_until = time.monotonic() + self._drain
            self._drain_signal = sig
            self._state.draining = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """Every 0.1 s in uvicorn's main loop: the drain's end starts the stop."""
        if self._drain_until is not None and not self._announced:
            self._announced = True
            log.warning("draining for %g s before stopping", self._drain)
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self._drain_until = float("inf")  # once
            super().handle_exit(self._drain_signal, None)
        return await super().on_tick(counter)


def main(settings: ApiSettings | None = None) -> None:
    settings = settings or ApiSettings()
    configure_logging(settings.log_level, "api", settings.log_format)
    tracing.configure("berth-api")
    config = server_config(settings)
    app = config.app
    assert isinstance(app, BerthApp)
    DrainingServer(config, settings.drain_seconds, app.control.state).run()
