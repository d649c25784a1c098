"""A request cancelled while its replica works on it: the agent stops waiting at once.

Real pieces throughout: a nats-server with Berth's layout, the API's Requester, the
agent's Puller and ReplicaSupervisor, and a replica that takes a request and never
answers (a plain TCP server), so only a cancel can end the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.artifacts import ModelCache
from broker.connection import Broker
from broker.envelope import Reply, RequestEnvelope
from broker.jetstream import backlog
from broker.publish import Requester
from broker.pull import Puller
from broker.streams import ensure_endpoint_consumer
from shared.messages import EndpointSpec, ReplicaRecord
from shared.settings import AgentSettings
from workers.http import ReplicaClient
from workers.runtimes.process import ProcessRuntime
from workers.supervisor import ReplicaSupervisor


class SilentReplica:
    """Reads a request, never answers; notes when its caller closes the connection."""

    def __init__(self) -> None:
        self.got_request = asyncio.Event()
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.got_request.set()
        await reader.read()  # until the caller closes
        self.closed.set()
        writer.close()


class Running:
    """A request a supervisor handles, its replica silent."""

    sup: ReplicaSupervisor
    task: asyncio.Task[None]
    replica: SilentReplica
    request_id: str
    waiter: asyncio.Future[Reply]
    endpoint: str


@contextlib.asynccontextmanager
async def running_request(broker: Broker, tmp_path: Path) -> AsyncIterator[Running]:
    spec = EndpointSpec(name=f"ep-{secrets.token_hex(3)}", request_timeout=30)
    await ensure_endpoint_consumer(broker, spec)
    requester = Requester(broker)
    await requester.start()
    rid = secrets.token_hex(8)
    waiter = requester.expect(rid)
    env = RequestEnvelope(
        request_id=rid, method="POST", path="/infer", reply_to=requester.reply_subject(rid)
    )
    await requester.publish(spec.name, env, b"{}")

    replica = SilentReplica()
    server = await asyncio.start_server(replica.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = AgentSettings(data_dir=tmp_path, agent_id="a1")

    async def unchanged(record: ReplicaRecord) -> None:
        return None

    sup = ReplicaSupervisor(
        replica_id="r1",
        spec=spec,
        broker=broker,
        runtime=ProcessRuntime(),
        settings=settings,
        work_dir=tmp_path,
        models=ModelCache(broker, tmp_path / "models"),
        on_change=unchanged,
    )
    puller = Puller(broker, spec.name)
    await puller.open()
    client = ReplicaClient("127.0.0.1", port)
    r = Running()
    try:
        delivery = await puller.next(5.0)
        assert delivery is not None
        r.sup, r.replica, r.request_id, r.waiter, r.endpoint = sup, replica, rid, waiter, spec.name
        r.task = asyncio.create_task(sup.path._handle(puller, delivery, client, client))
        async with asyncio.timeout(5):
            await replica.got_request.wait()
        yield r
    finally:
        client.close()
        await puller.close()
        server.close()
        await server.wait_closed()


async def test_a_cancel_ends_the_wait_for_the_replica(broker: Broker, tmp_path: Path) -> None:
    async with running_request(broker, tmp_path) as r:
        assert r.sup.cancel(r.request_id)
        async with asyncio.timeout(5):
            await r.task  # ends, without raising: the request was dropped
            await r.replica.closed.wait()  # the replica sees its caller leave
        assert not r.waiter.done()  # nobody waits for a reply, none is sent
        assert not r.sup.cancel(r.request_id)  # nothing left to cancel
        for _ in range(100):  # acked: out of the queue, not redelivered
            left = await backlog(broker, r.endpoint)
            if left is not None and left.in_flight == 0 and left.queued == 0:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail(f"the cancelled request was not acked: {left}")


async def test_stopping_the_agent_is_not_taken_for_a_cancel(broker: Broker, tmp_path: Path) -> None:
    async with running_request(broker, tmp_path) as r:
        r.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await r.task
        assert not r.sup.cancel(r.request_id)  # its entry went with it
