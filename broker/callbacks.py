"""The callbacks work queue: one message per job whose callback is due (``berth.cb.<id>``).

Every API instance runs a :class:`CallbackQueue` on the one durable consumer:
a message is acked when its delivery is done with, and naked with the delay
the caller's retry policy gives otherwise, so retries outlive any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

from broker.connection import Broker
from shared import names

__all__ = ["CallbackQueue", "Deliver"]

log = logging.getLogger(__name__)

# Deliver one job's callback: None when done with it, else seconds until the next try.
# The second argument is how many times this message was handed out.
Deliver = Callable[[str, int], Awaitable[float | None]]


class CallbackQueue:
    def __init__(self, broker: Broker, deliver: Deliver, *, ack_wait: float, concurrency: int = 16):
        self._broker = broker
        self._deliver = deliver
        self._ack_wait = ack_wait
        self._concurrency = concurrency
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = ConsumerConfig(
            durable_name=names.CALLBACKS_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=1024,
        )
        await self._broker.js.add_consumer(names.CALLBACKS_STREAM, config)
        self._task = asyncio.create_task(self._run(), name="callbacks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        sub = await self._broker.js.pull_subscribe_bind(
            durable=names.CALLBACKS_CONSUMER, stream=names.CALLBACKS_STREAM
        )
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                room = self._concurrency - len(running)
                if room <= 0:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(room, timeout=1.0)
                except (TimeoutError, NatsTimeout):
                    continue
                except Exception as exc:  # JetStream briefly away: try again shortly
                    log.info("callbacks: fetch failed: %r", exc)
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._one(msg))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            for task in running:  # unacked: handed out again after ack_wait, to any API
                task.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _one(self, msg: Any) -> None:
        response_id = msg.subject.removeprefix(names.CALLBACK_SUBJECT_PREFIX)
        delay = await self._deliver(response_id, msg.metadata.num_delivered)
        if delay is None:
            await msg.ack()
        else:
            await msg.nak(delay=delay)
