"""Running a long-lived Berth process: logging, uvloop, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import uvloop

__all__ = ["OnStop", "configure_logging", "run_service"]

# Registers a function to call when the process is asked to stop.
OnStop = Callable[[Callable[[], None]], None]


def configure_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("nats", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_service(main: Callable[[OnStop], Awaitable[None]]) -> None:
    """Run ``main(on_signal)`` on uvloop; SIGINT/SIGTERM call the stop function it registers."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        stoppers: list[Callable[[], None]] = []

        def register(stop: Callable[[], None]) -> None:
            stoppers.append(stop)

        def on_signal() -> None:
            for stop in stoppers:
                stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await main(register)

    uvloop.run(runner())
