"""GPU endpoints end to end, on an agent with declared GPUs (BERTH_GPUS), so it runs anywhere.

Each replica sees only the GPU it was given; a replica that finds none free waits
for one (the scaler says why); the fleet's instance types come from the agents.
On a host with NVIDIA GPUs the same path runs with what nvidia-smi lists:
bench/gpu_check.py does that on real hardware.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import FAST, NatsServer, Stack, wait_for

pytestmark = pytest.mark.e2e


def test_each_gpu_replica_gets_its_own_device(own_nats: NatsServer, tmp_path: Path) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env={**FAST, "BERTH_GPUS": "testgpu:2"})
    try:
        stack.start()
        with stack.client() as c:
            wait_for(
                lambda: any(
                    t["instance_name"] == "gpu.testgpu" and t["total"] == 2
                    for t in c.get("/v1/instance-types").json()
                ),
                15,
                "the agent's GPUs in /v1/instance-types",
            )
            bad = c.post(
                "/v1/endpoint", json={"name": "x", "model_id": "m", "instance_type": "gpu"}
            )
            assert bad.status_code == 422 and "instance type" in bad.text
        stack.deploy("gpu-ep", instance_type="gpu.testgpu", max_replicas=3, scale_to_zero=1)
        stack.deploy("cpu-ep", max_replicas=1, scale_to_zero=1)

        def call(endpoint: str) -> tuple[str, str]:
            with stack.client() as c:
                resp = c.post(f"/e/{endpoint}/infer", json={"prompt": "hold", "sleep": 1.0})
                assert resp.status_code == 200, resp.text
                out = resp.json()["output"]
                return out["replica"], out["gpus"]

        # Three at once; two GPUs: two replicas, each with its own device.
        with ThreadPoolExecutor(3) as pool:
            seen = dict(pool.map(lambda _: call("gpu-ep"), range(3)))
        assert len(seen) == 2 and sorted(seen.values()) == ["0", "1"], seen
        replicas = stack.replicas("gpu-ep")
        assert len(replicas) == 2  # the third replica had no GPU to run on
        with stack.client() as c:
            events = c.get("/v1/events/gpu-ep", params={"max_lines": 200}).json()
            reasons = [e["event"]["details"].get("reason", "") for e in events]
            assert any("free testgpu GPU" in r for r in reasons), reasons
            free = {t["instance_name"]: t["free"] for t in c.get("/v1/instance-types").json()}
            assert free["gpu.testgpu"] == 0
        # More GPUs than any host has: no waiting, a clear answer.
        stack.deploy("too-big", instance_type="gpu.testgpu.3x", max_replicas=1)
        with stack.client() as c:
            resp = c.post("/e/too-big/infer", json={"prompt": "p"})
            assert resp.status_code == 503, resp.text
            assert "no agent offers 3 testgpu GPU(s) on one host" in resp.json()["error"]["message"]
            c.delete("/v1/endpoint/too-big")
        # A CPU replica on a GPU host sees no GPU at all.
        assert call("cpu-ep")[1] == ""
        # Scaled to zero, the GPUs are free again.
        with stack.client() as c:
            wait_for(
                lambda: (
                    {t["instance_name"]: t["free"] for t in c.get("/v1/instance-types").json()}[
                        "gpu.testgpu"
                    ]
                    == 2
                ),
                30,
                "the GPUs to be given back",
            )
    finally:
        stack.close()
