"""The agent's GPU handling on real hardware: inventory, isolation, placement, cold start.

Run on a host with NVIDIA GPUs and PyTorch (``python -m bench.gpu_check``). It
starts its own nats-server and Berth (API, scaler, one agent that finds its
GPUs with nvidia-smi), deploys examples/torch-matmul three ways, and writes a
JSON report:

- on ``gpu.<type>``: the replica sees exactly the GPU it was given, runs a bf16
  matrix product there; cold start (first request to response, PyTorch import
  and CUDA start-up included) and warm latency are measured;
- on ``cpu``: the replica sees no GPU at all;
- on ``gpu.<type>.<n+1>x`` (more GPUs than the host has): no replica starts, and
  the request is answered at once with a 503 that says why.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import FAST as BENCH_FAST
from berth.local import ROOT, LocalNats, LocalStack
from workers.gpus import discover

FAST = {**BENCH_FAST, "BERTH_STARTUP_BUDGET": "120"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--warm", type=int, default=20)
    args = p.parse_args()
    report: dict[str, Any] = {}
    gpus = discover(None)
    report["inventory"] = [g.model_dump() for g in gpus]
    print("GPUs:", [(g.id, g.type, g.name, g.memory_mib) for g in gpus], flush=True)
    if not gpus:
        raise SystemExit("no GPU found by nvidia-smi")
    family = gpus[0].type
    count = sum(1 for g in gpus if g.type == family)
    model = ROOT / "examples" / "torch-matmul"

    with tempfile.TemporaryDirectory() as tmp:
        nats = LocalNats(Path(tmp) / "nats").start()
        stack = LocalStack(Path(tmp) / "berth", nats.url, env=FAST)
        try:
            stack.start()
            with stack.client() as c:
                types = c.get("/v1/instance-types").json()
                for _ in range(100):
                    if any(t["instance_name"] == f"gpu.{family}" for t in types):
                        break
                    time.sleep(0.1)
                    types = c.get("/v1/instance-types").json()
                report["instance_types"] = types
                print("instance types:", json.dumps(types), flush=True)

                stack.deploy("gpu", model, instance_type=f"gpu.{family}", request_timeout=300)
                started = time.perf_counter()
                first = c.post("/e/gpu/infer", json={"n": 8192}, timeout=300)
                cold = time.perf_counter() - started
                report["gpu_first"] = {"status": first.status_code, "body": first.json()}
                report["gpu_cold_start_s"] = round(cold, 3)
                print(f"GPU endpoint, first call ({cold:.2f} s):", first.text, flush=True)
                lat = []
                for _ in range(args.warm):
                    t0 = time.perf_counter()
                    r = c.post("/e/gpu/infer", json={"n": 256, "repeat": 1})
                    lat.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200, r.text
                report["gpu_warm_ms_p50"] = round(statistics.median(lat), 2)
                report["gpu_warm_ms_max"] = round(max(lat), 2)
                report["gpu_replicas"] = c.get("/v1/endpoint/gpu").json()["replicas"]
                agents = c.get("/v1/instance-types").json()
                report["instance_types_in_use"] = agents

                stack.deploy("cpu", model, instance_type="cpu")
                cpu = c.post("/e/cpu/infer", json={"n": 256}, timeout=300)
                report["cpu"] = {"status": cpu.status_code, "body": cpu.json()}
                print("CPU endpoint:", cpu.text, flush=True)

                stack.deploy(
                    "toobig", model, instance_type=f"gpu.{family}.{count + 1}x", request_timeout=5
                )
                big = c.post("/e/toobig/infer", json={}, timeout=60)
                events = c.get("/v1/events/toobig", params={"max_lines": 50}).json()
                report["toobig"] = {
                    "status": big.status_code,
                    "body": big.json(),
                    "reasons": sorted(
                        {e["event"]["details"].get("reason", "") for e in events} - {""}
                    ),
                }
                print("too big:", json.dumps(report["toobig"]), flush=True)
        finally:
            stack.close()
            nats.stop()
            for name, log in stack.logs.items():
                report[f"log_{name}_tail"] = log.read_text()[-3000:] if log.exists() else ""
    checks = {
        "gpu_served": report["gpu_first"]["status"] == 200,
        "gpu_sees_one": report["gpu_first"]["body"].get("output", {}).get("visible_gpus") == 1,
        "gpu_uuid_given": str(
            report["gpu_first"]["body"].get("output", {}).get("cuda_visible_devices", "")
        ).startswith("GPU-"),
        "cpu_sees_none": report["cpu"]["body"].get("output", {}).get("visible_gpus") == 0,
        "toobig_refused": report["toobig"]["status"] == 503
        and "no agent offers" in json.dumps(report["toobig"]["body"]),
    }
    report["checks"] = checks
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(checks), flush=True)
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
