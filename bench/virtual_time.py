"""An asyncio event loop whose clock jumps: when nothing is ready, time moves straight to
the next timer. Code written for the real loop (``asyncio.sleep``, ``asyncio.timeout``,
``loop.call_later``) runs unchanged, hours of it in seconds, as long as it does no real
I/O: the simulation feeds the scaler through in-process calls only.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

__all__ = ["VirtualTimeLoop"]

RESOLUTION = 1e-6


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop):
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)  # the loop's own wake-up pipe, nothing else
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: nothing is scheduled and nothing can wake the loop")
        # At least a microsecond, as a real clock would move: code that waits "until
        # t" and then checks "now >= t" must not find itself a rounding error short.
        self._loop.now += max(timeout, RESOLUTION)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 0.0):
        self.now = start
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now
