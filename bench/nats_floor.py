"""The floor under Berth's data path: NATS alone, with no HTTP at either end.

    python -m bench.nats_floor [--requests 3000] [--body BYTES]

One process, two connections (an "API" and an "agent"), one real nats-server on
127.0.0.1: JetStream publish and its ack, delivery to a waiting pull, a reply on
core NATS. What Berth adds beyond this is HTTP handling in the API and the agent.
``--body`` sets the request's size (the reply echoes it), up to NATS's max payload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

import uvloop

from berth.local import LocalNats
from broker.connection import connected
from broker.envelope import Reply, RequestEnvelope
from broker.publish import Requester
from broker.pull import Puller
from broker.streams import ensure_endpoint_consumer
from shared.messages import EndpointSpec


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[int((len(values) - 1) * q)]


async def run(url: str, requests: int, body: bytes) -> None:
    async with connected(url, "floor-api") as api, connected(url, "floor-agent") as agent:
        await ensure_endpoint_consumer(api, EndpointSpec(name="floor"))
        requester = Requester(api)
        await requester.start()
        puller = Puller(agent, "floor")
        await puller.open()

        async def serve() -> None:
            while True:
                delivery = await puller.next(2.0)
                if delivery is not None:
                    await puller.reply(delivery, Reply(status=200, body=delivery.body))

        server = asyncio.create_task(serve())
        round_trip: list[float] = []
        publish: list[float] = []
        warmup = requests // 10
        for i in range(requests + warmup):
            rid = f"r{i}"
            env = RequestEnvelope(
                request_id=rid, method="POST", path="/infer", reply_to=requester.reply_subject(rid)
            )
            waiter = requester.expect(rid)
            t0 = time.perf_counter()
            await requester.publish("floor", env, body)
            t1 = time.perf_counter()
            await waiter
            t2 = time.perf_counter()
            requester.forget(rid)
            if i >= warmup:
                round_trip.append((t2 - t0) * 1000)
                publish.append((t1 - t0) * 1000)
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        await puller.close()
    print(
        f"NATS round trip: p50 {percentile(round_trip, 0.5):.3f} ms, p99 {percentile(round_trip, 0.99):.3f} ms; "
        f"publish + JetStream ack: p50 {percentile(publish, 0.5):.3f} ms "
        f"({requests} requests of {len(body):,} bytes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--body", type=int, default=0, help="request size in bytes")
    args = parser.parse_args()
    body = b'{"prompt":"x"}' if not args.body else b"x" * args.body
    with tempfile.TemporaryDirectory(prefix="berth-floor-") as tmp:
        nats = LocalNats(Path(tmp)).start()
        try:
            uvloop.run(run(nats.url, args.requests, body))
        finally:
            nats.stop()


if __name__ == "__main__":
    main()
