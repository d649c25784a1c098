"""The scaler's two figures from issue #6, on this machine, loopback only.

- **Burst**: 100 concurrent requests to an endpoint at zero replicas with
  ``max_replicas`` 4: how long after the first request each of the 4 replica
  starts was issued (from the scaler's ``scale_decision`` events).
- **Idle cost**: CPU used by the scaler process over ``--idle-seconds`` with
  ``--endpoints`` idle endpoints (no replicas, no traffic), as a share of one core.
- **Warm idle cost**: the same with each endpoint holding one ready, idle replica
  (a long ``scale_to_zero``). The replicas are records only: this process writes
  them to the replicas bucket and refreshes them every 2 s, as an agent's
  heartbeat does, so that what is measured is the scaler, not a thousand models.

``python -m bench.scaler [--endpoints 1000] [--idle-seconds 30] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench import FAST
from berth.local import ROOT, LocalNats, LocalStack
from broker.artifacts import pack_dir
from broker.connection import connected
from broker.registry import delete_key, put_model, read_models
from shared import names
from shared.messages import AgentRecord, EndpointSpec, ReplicaRecord, ReplicaState

MODEL = ROOT / "tests" / "models" / "probe"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(stack: LocalStack, name: str, requests: int = 100) -> list[float]:
    """ms from the first request to each replica start the scaler issued."""
    stack.deploy(name, MODEL, max_replicas=4, scale_to_zero=2)
    t0 = time.time()
    with ThreadPoolExecutor(requests) as pool, stack.client() as c:
        list(
            pool.map(
                lambda _: c.post(f"/e/{name}/infer", json={"prompt": "b", "sleep": 0.5}),
                range(requests),
            )
        )
        events = c.get(f"/v1/events/{name}", params={"max_lines": 1000}).json()
        c.delete(f"/v1/endpoint/{name}")
    starts = []
    for e in events:
        if e["event"]["type"] == "scale_decision":
            at = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            starts += [(at - t0) * 1000] * int(e["event"]["details"].get("start") or 0)
    return sorted(starts)[:4]


def idle_cost(stack: LocalStack, count: int, seconds: float) -> dict[str, Any]:
    with stack.client() as c:
        model_id = c.post("/v1/models", content=pack_dir(MODEL)).json()["model_id"]

        def create(i: int) -> int:
            with httpx.Client(
                base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=60
            ) as h:
                return h.post(
                    "/v1/endpoint", json={"name": f"idle-{i}", "model_id": model_id}
                ).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(create, range(count)))
        assert all(code == 201 for code in codes), set(codes)
    time.sleep(5)  # let the scaler see them all (not measured)
    pid = stack.procs["scaler"].pid
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    used, elapsed = cpu_seconds(pid) - before, time.monotonic() - t0
    return {
        "endpoints": count,
        "seconds": round(elapsed, 1),
        "core_share_pct": round(100 * used / elapsed, 2),
    }


def _heartbeats(url: str, specs: list[EndpointSpec], stop: threading.Event) -> None:
    """A stand-in agent: one ready, idle replica per endpoint, refreshed every 2 s."""

    async def run() -> None:
        async with connected(url, "bench-heartbeats") as broker:
            # The specs as the API stored them: a replica of another digest is outdated.
            stored = await read_models(broker, names.KV_ENDPOINTS, EndpointSpec)
            digests = {spec.name: stored[spec.name].replica_digest() for spec in specs}
            while not stop.is_set():
                now = time.time()
                agent = AgentRecord(agent_id="bench", slots=10**6, used_slots=len(specs))
                await put_model(broker, names.KV_AGENTS, "bench", agent)
                for spec in specs:
                    record = ReplicaRecord(
                        endpoint=spec.name,
                        replica_id="r0",
                        agent_id="bench",
                        state=ReplicaState.READY,
                        digest=digests[spec.name],
                        started_at=now - 60,
                        ready_at=now - 59,
                        updated_at=now,
                    )
                    await put_model(
                        broker, names.KV_REPLICAS, names.replica_key(spec.name, "r0"), record
                    )
                await asyncio.sleep(2.0)
            for spec in specs:
                await delete_key(broker, names.KV_REPLICAS, names.replica_key(spec.name, "r0"))

    asyncio.run(run())


def warm_idle_cost(stack: LocalStack, url: str, count: int, seconds: float) -> dict[str, Any]:
    with stack.client() as c:
        model_id = c.post("/v1/models", content=pack_dir(MODEL)).json()["model_id"]
        body = {"model_id": model_id, "scale_to_zero": 3600}

        def create(i: int) -> dict[str, Any]:
            with httpx.Client(
                base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=60
            ) as h:
                got = h.post("/v1/endpoint", json={**body, "name": f"warm-{i}"})
                assert got.status_code == 201, got.text
                return got.json()  # type: ignore[no-any-return]

        with ThreadPoolExecutor(8) as pool:
            created = list(pool.map(create, range(count)))
    specs = [EndpointSpec(**{**body, "name": e["name"]}) for e in created]
    stop = threading.Event()
    beats = threading.Thread(target=_heartbeats, args=(url, specs, stop), daemon=True)
    beats.start()
    try:
        time.sleep(10)  # the scaler sees them all and settles (not measured)
        pid = stack.procs["scaler"].pid
        before, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        used, elapsed = cpu_seconds(pid) - before, time.monotonic() - t0
    finally:
        stop.set()
        beats.join(30)
    return {
        "endpoints": count,
        "seconds": round(elapsed, 1),
        "core_share_pct": round(100 * used / elapsed, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoints", type=int, default=1000)
    p.add_argument("--idle-seconds", type=float, default=30)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only-warm", action="store_true", help="just the warm idle cost")
    p.add_argument("--out", default="bench/results/scaler.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scaler-"))
    nats = LocalNats(work / "nats").start()
    # Production tick (1 s), quick agent timings.
    env = {
        **FAST,
        "BERTH_TICK_INTERVAL": "1.0",
        "BERTH_LOG_LEVEL": "WARNING",
        "BERTH_DOCKER_HOST": "none",
    }
    stack = LocalStack(work / "berth", nats.url, env=env)
    result: dict[str, Any] = {}
    try:
        stack.start()
        if args.only_warm:
            result["warm_idle"] = warm_idle_cost(stack, nats.url, args.endpoints, args.idle_seconds)
            print("warm idle:", json.dumps(result["warm_idle"]), flush=True)
            return
        runs = [burst(stack, f"burst-{i}") for i in range(args.repeat)]
        last = [r[-1] for r in runs if len(r) == 4]
        result["burst_4th_start_ms"] = {
            "runs": [[round(x, 1) for x in r] for r in runs],
            "median": round(statistics.median(last), 1) if last else None,
            "max": round(max(last), 1) if last else None,
        }
        print("burst:", json.dumps(result["burst_4th_start_ms"]), flush=True)
        result["idle"] = idle_cost(stack, args.endpoints, args.idle_seconds)
        print("idle:", json.dumps(result["idle"]), flush=True)
        result["warm_idle"] = warm_idle_cost(stack, nats.url, args.endpoints, args.idle_seconds)
        print("warm idle:", json.dumps(result["warm_idle"]), flush=True)
    finally:
        stack.close()
        nats.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
