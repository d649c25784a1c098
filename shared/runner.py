"""Running a long-lived Berth process: logging, uvloop, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable

import uvloop

__all__ = ["OnStop", "configure_logging", "run_service"]

# Registers a function to call when the process is asked to stop.
OnStop = Callable[[Callable[[], None]], None]


class JsonLines(logging.Formatter):
    """A log record as one JSON line; the current span's ids when a trace is being made."""

    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        ids = _trace_ids()
        if ids:
            out["trace_id"], out["span_id"] = ids
        return json.dumps(out, default=str)


def _trace_ids() -> tuple[str, str] | None:
    from workers import tracing

    return tracing.current_ids() if tracing.ENABLED else None


def configure_logging(level: str, name: str, fmt: str = "text") -> None:
    if fmt == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLines(name))
        logging.Formatter.converter = time.gmtime
        logging.basicConfig(level=level.upper(), handlers=[handler])
    else:
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
