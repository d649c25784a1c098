"""The process runtime on its own: real replica processes, forked from the zygote or spawned."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from shared.messages import EndpointSpec
from tests.conftest import MODELS, ROOT, free_port, process_alive
from workers.runtimes.base import Launch, failure_reason
from workers.runtimes.process import ProcessRuntime


def launch(tmp_path: Path, model: Path, **env: str) -> Launch:
    port = free_port()
    return Launch(
        replica_id="r1",
        spec=EndpointSpec(name="t"),
        port=port,
        env={"PORT": str(port), "OCTOAI_REPLICA_NAME": "t-r1", **env},
        log_path=tmp_path / "replica.log",
        model_dir=model,
    )


async def healthy(port: int) -> None:
    async with httpx.AsyncClient() as c, asyncio.timeout(30):
        while True:
            try:
                if (await c.get(f"http://127.0.0.1:{port}/healthcheck")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("zygote", [True, False], ids=["zygote", "spawn"])
async def test_replica_serves_and_stops(tmp_path: Path, zygote: bool) -> None:
    runtime = ProcessRuntime(use_zygote=zygote)
    try:
        spec = launch(tmp_path, ROOT / "examples" / "echo")
        replica = await runtime.start(spec)
        await healthy(spec.port)
        async with httpx.AsyncClient() as c:
            resp = await c.post(f"http://127.0.0.1:{spec.port}/infer", json={"prompt": "z"})
        assert resp.json()["output"] == {"text": "z", "replica": "t-r1"}
        assert replica.exit_code is None
        await replica.stop(grace=5)
        assert replica.exit_code is not None
        await replica.stop(grace=5)  # safe twice
    finally:
        await runtime.close()


@pytest.mark.parametrize("zygote", [True, False], ids=["zygote", "spawn"])
async def test_setup_failure_exits_with_its_reason(tmp_path: Path, zygote: bool) -> None:
    runtime = ProcessRuntime(use_zygote=zygote)
    try:
        replica = await runtime.start(
            launch(tmp_path, MODELS / "probe", PROBE_FAIL_SETUP="no weights")
        )
        code = await asyncio.wait_for(replica.wait(), 30)
        assert code == 3
        assert (
            failure_reason(code, replica.log_tail()) == "setup() failed: RuntimeError: no weights"
        )
    finally:
        await runtime.close()


async def test_replicas_die_with_the_zygote(tmp_path: Path) -> None:
    """An agent (and so its zygote) killed hard leaves no orphan replicas behind."""
    runtime = ProcessRuntime()
    spec = launch(tmp_path, ROOT / "examples" / "echo")
    replica = await runtime.start(spec)
    await healthy(spec.port)
    zygote = runtime._zygote
    assert zygote is not None
    os.kill(zygote.proc.pid, signal.SIGKILL)
    assert await asyncio.wait_for(replica.wait(), 10) == -signal.SIGKILL
    pid = replica.pid  # type: ignore[attr-defined]
    async with asyncio.timeout(10):
        while process_alive(pid):
            await asyncio.sleep(0.02)
    await runtime.close()
