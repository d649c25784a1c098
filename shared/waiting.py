"""Waiting for a future with a time limit, at the cost of one timer.

``asyncio.timeout`` works on the awaiting task: it finds the task, cancels it when
time is up and turns the cancellation back into a TimeoutError on the way out,
several times the cost of a timer. On the data path a
request waits like this several times (for JetStream's ack, for its reply, in the
agent for its delivery and for the replica's answer), so those waits end the
future itself instead.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

__all__ = ["wait_by"]

T = TypeVar("T")


def _expire(fut: asyncio.Future[T]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def wait_by(fut: asyncio.Future[T], deadline: float) -> T:
    """``await fut``; if it is not done by ``deadline`` (loop time), it fails with TimeoutError.

    Only for a future the caller owns: a timeout ends the future itself, so everyone
    awaiting it sees the TimeoutError.
    """
    handle = asyncio.get_running_loop().call_at(deadline, _expire, fut)
    try:
        return await fut
    finally:
        handle.cancel()
