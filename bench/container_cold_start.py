"""A container replica's cold start: first request to response, image already on the host.

``python -m bench.container_cold_start`` starts what it needs (a Docker engine of
its own with the offline base image from tests/dockerenv.py, nats-server, and
Berth's API, scaler and agent), then for each run creates an endpoint for the
echo image (tests/images/echo) with no replica, times one request through
the cold start, reads the replica's own start-up time from its events, and
deletes the endpoint. Loopback only; bounded by --runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench import FAST as BENCH_FAST
from berth.local import LocalNats, LocalStack
from tests.dockerenv import DockerEnv

FAST = {**BENCH_FAST, "BERTH_LOG_LEVEL": "WARNING"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--out", default="bench/results/container_cold_start.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    docker_env = DockerEnv(work / "docker").start()
    image = docker_env.build_echo()
    nats = LocalNats(work / "nats").start()
    stack = LocalStack(work / "berth", nats.url, env={**FAST, "BERTH_DOCKER_HOST": docker_env.url})
    totals, startups = [], []
    try:
        stack.start()
        with stack.client() as c:
            for i in range(args.runs):
                name = f"cold-{i}"
                resp = c.post(
                    "/v1/endpoint",
                    json={"name": name, "image_url": image, "port": 8080, "max_replicas": 1},
                )
                assert resp.status_code == 201, resp.text
                t0 = time.perf_counter()
                resp = c.post(f"/e/{name}/infer", json={"prompt": "cold"})
                totals.append((time.perf_counter() - t0) * 1000)
                assert resp.status_code == 200, resp.text
                events = c.get(f"/v1/events/{name}").json()
                ready = [e for e in events if e["event"]["type"] == "replica_ready"]
                startups.append(ready[0]["event"]["details"]["startup_s"] * 1000)
                c.delete(f"/v1/endpoint/{name}")
                print(
                    f"run {i}: {totals[-1]:.0f} ms (replica start {startups[-1]:.0f} ms)",
                    flush=True,
                )
    finally:
        stack.close()
        nats.stop()
        docker_env.stop()
    result = {
        "runs": args.runs,
        "first_request_ms": {
            "median": round(statistics.median(totals)),
            "min": round(min(totals)),
            "max": round(max(totals)),
        },
        "replica_start_ms": {
            "median": round(statistics.median(startups)),
            "min": round(min(startups)),
            "max": round(max(startups)),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
