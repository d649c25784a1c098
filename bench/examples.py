"""Each CPU example of the catalogue, measured through a whole Berth: for docs/performance.md.

    python -m bench.examples [--requests 200] [--seconds 10] [--only ocr,tts]

Starts its own nats-server, API, scaler and agent on 127.0.0.1 (the agent's model
environments in a fresh folder, so the first start of an example with a
requirements.txt installs it, from uv's cache when it has the packages) and, per
example, deploys it from the catalogue and measures:

* cold start: the first request on the endpoint at zero replicas to its answer,
  split into the environment's install (its event), the rest of the replica's
  start (process, model load: ``setup()``), and the first inference;
* a second cold start of the same example (installed: the start a user sees
  after the first);
* warm latency at concurrency 1: p50 and p99 of ``--requests`` sample inputs;
* throughput at one replica: requests answered in ``--seconds`` with 4 callers;
* resident memory of the replica process (VmRSS) after that.

Writes bench/results/examples.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench import FAST
from bench.harness import direct_children as children
from bench.harness import rss_mib
from bench.overhead import percentile
from berth.local import ROOT, LocalNats, LocalStack

CPU_EXAMPLES = ("echo", "ocr", "tts", "embeddings", "imagefx")


def events(c: httpx.Client, name: str) -> list[dict[str, Any]]:
    return [e["event"] for e in c.get(f"/v1/events/{name}", params={"max_lines": 500}).json()]


def measure(stack: LocalStack, example: str, args: argparse.Namespace) -> dict[str, Any]:
    with stack.client() as c:
        sample = c.get(f"/v1/examples/{example}").json()["sample_input"]
        route = c.get(f"/v1/examples/{example}").json()["route"]

        def cold(name: str) -> dict[str, float]:
            resp = c.post(
                "/v1/endpoint", json={"name": name, "example": example, "max_replicas": 1}
            )
            resp.raise_for_status()
            started = time.perf_counter()
            answer = c.post(f"/e/{name}{route}", json=sample, timeout=1800)
            total = time.perf_counter() - started
            answer.raise_for_status()
            seen = events(c, name)
            install = next(
                (e["details"]["seconds"] for e in seen if e["type"] == "environment_installed"),
                0.0,
            )
            ready = next(e["details"]["startup_s"] for e in seen if e["type"] == "replica_ready")
            inference = answer.json().get("analytics", {}).get("inference_time_ms", 0.0) / 1000
            return {
                "total_s": round(total, 3),
                "install_s": round(install, 3),
                "start_and_load_s": round(ready - install, 3),
                "first_inference_s": round(inference, 3),
            }

        first = cold(f"bx-{example}")
        c.delete(f"/v1/endpoint/bx-{example}")
        again = cold(f"by-{example}")
        name = f"by-{example}"
        ms = []
        for _ in range(args.requests):
            t = time.perf_counter()
            c.post(f"/e/{name}{route}", json=sample).raise_for_status()
            ms.append((time.perf_counter() - t) * 1000)

    done = 0
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds

    def caller() -> None:
        nonlocal done
        with stack.client() as cc:
            while time.monotonic() < stop:
                cc.post(f"/e/{name}{route}", json=sample).raise_for_status()
                with lock:
                    done += 1

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    agent = stack.procs["agent"].pid
    replicas = [p for z in children(agent) for p in children(z)]
    with stack.client() as c:
        c.delete(f"/v1/endpoint/{name}")
    return {
        "example": example,
        "cold_first": first,
        "cold_installed": again,
        "warm_ms": {
            "p50": round(percentile(ms, 0.5), 2),
            "p99": round(percentile(ms, 0.99), 2),
        },
        "throughput_rps": round(done / args.seconds, 1),
        "rss_mib": round(max((rss_mib(p) for p in replicas), default=0.0), 1),
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| example | first cold start (install + start/load + 1st inference) | cold start, installed | warm p50 / p99 (ms) | 1 replica, 4 callers (req/s) | replica RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        f, a = r["cold_first"], r["cold_installed"]
        rows.append(
            f"| {r['example']} | {f['total_s']:.2f} s ({f['install_s']:.1f} + {f['start_and_load_s']:.2f}"
            f" + {f['first_inference_s']:.3f}) | {a['total_s']:.2f} s | {r['warm_ms']['p50']:.1f} / "
            f"{r['warm_ms']['p99']:.1f} | {r['throughput_rps']:.1f} | {r['rss_mib']:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default=",".join(CPU_EXAMPLES))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="berth-examples-") as tmp:
        nats = LocalNats(Path(tmp) / "nats").start()
        env = {**FAST, "BERTH_LOG_LEVEL": "WARNING", "BERTH_DOCKER_HOST": "none"}
        stack = LocalStack(Path(tmp) / "berth", nats.url, env=env)
        try:
            stack.start()
            for example in args.only.split(","):
                results.append(measure(stack, example, args))
                print(json.dumps(results[-1]), flush=True)
        finally:
            stack.close()
            nats.stop()
    out = ROOT / "bench" / "results" / "examples.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
