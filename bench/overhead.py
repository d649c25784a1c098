"""Platform overhead and cold start, for docs/performance.md.

    python -m bench.overhead [--requests 2000] [--cold-runs 7]

Starts its own nats-server, API, scaler and agent on 127.0.0.1 (nothing else is
contacted), deploys the echo example and measures:

* overhead: a warm sync request through the whole path (API → JetStream →
  agent → replica → reply) against the *same* replica called directly, at
  concurrency 1. Calls alternate between the two paths so drift on a shared
  machine hits both alike; the added latency is the difference of percentiles.
* cold start: from the first request on an endpoint at zero replicas to its
  response (model already in the agent's cache; one uncached run is reported
  apart).

Writes bench/results/overhead.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from berth.local import ROOT, LocalNats, LocalStack, wait_until

ECHO = ROOT / "examples" / "echo"
BODY = json.dumps({"prompt": "hello", "n": 2}).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(ms, 0.50), 3),
        "p90": round(percentile(ms, 0.90), 3),
        "p99": round(percentile(ms, 0.99), 3),
        "mean": round(statistics.fmean(ms), 3),
    }


class Conn:
    """A keep-alive HTTP/1.1 connection, timing one POST at a time."""

    def __init__(
        self, url: str, path: str, token: str | None = None, replica_key: str | None = None
    ):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.path = path
        self.headers = {"content-type": "application/json"}
        if token:
            self.headers["authorization"] = f"Bearer {token}"
        if replica_key:  # a replica answers only its agent, or whoever has its key
            self.headers["x-berth-replica-key"] = replica_key

    def post(self) -> float:
        started = time.perf_counter()
        self.conn.request("POST", self.path, body=BODY, headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return elapsed


async def replica_target(nats_url: str, endpoint: str, data_dir: Path) -> tuple[str, str | None]:
    """A running replica of ``endpoint``: its URL, and its key (which its agent keeps in
    the data directory; None from a Berth that had no keys)."""
    from broker.connection import connect
    from broker.registry import read_models
    from shared import names
    from shared.messages import ReplicaRecord

    broker = await connect(nats_url, "bench")
    try:
        replicas = await read_models(broker, names.KV_REPLICAS, ReplicaRecord)
        for key, record in replicas.items():
            if key.startswith(endpoint + ".") and record.url:
                path = data_dir / f"agent-{record.agent_id}" / "replica-keys"
                path /= record.replica_id
                return record.url, path.read_text() if path.exists() else None
    finally:
        await broker.close()
    raise RuntimeError(f"no replica of {endpoint} found")


def overhead_round(direct: Conn, berth: Conn, requests: int) -> dict[str, dict[str, float]]:
    d_ms, b_ms = [], []
    for i in range(requests):
        if i % 2:
            d_ms.append(direct.post())
            b_ms.append(berth.post())
        else:
            b_ms.append(berth.post())
            d_ms.append(direct.post())
    d, b = summary(d_ms), summary(b_ms)
    return {"direct_ms": d, "berth_ms": b, "added_ms": {k: round(b[k] - d[k], 3) for k in d}}


def measure_overhead(
    stack: LocalStack, nats_url: str, requests: int, warmup: int, repeat: int
) -> dict[str, Any]:
    """``repeat`` rounds of ``requests`` each; per figure, the median round and the range."""
    stack.deploy("bench-echo", ECHO, min_replicas=1, max_replicas=1)
    wait_until(
        lambda: [r for r in stack.replicas("bench-echo") if r["status"] == "running"],
        60,
        "a warm replica",
    )
    url, key = asyncio.run(replica_target(nats_url, "bench-echo", stack.data_dir))
    direct = Conn(url, "/infer", replica_key=key)
    berth = Conn(stack.url, "/e/bench-echo/infer", stack.token)
    for _ in range(warmup):
        direct.post()
        berth.post()
    rounds = [overhead_round(direct, berth, requests) for _ in range(repeat)]
    out: dict[str, Any] = {"requests_per_round": requests, "rounds": repeat}
    for key in ("direct_ms", "berth_ms", "added_ms"):
        out[key] = {
            q: {
                "median": round(statistics.median(r[key][q] for r in rounds), 3),
                "min": min(r[key][q] for r in rounds),
                "max": max(r[key][q] for r in rounds),
            }
            for q in ("p50", "p90", "p99", "mean")
        }
    return out


def measure_cold_start(stack: LocalStack, runs: int) -> dict[str, Any]:
    def cold(name: str) -> float:
        stack.deploy(name, ECHO, min_replicas=0, max_replicas=1, scale_to_zero=600)
        conn = Conn(stack.url, f"/e/{name}/infer", stack.token)
        elapsed = conn.post()
        with stack.client() as c:
            c.delete(f"/v1/endpoint/{name}")
        return elapsed

    times = [cold(f"bench-cold-{i}") for i in range(runs)]
    return {
        "runs": runs,
        "ms": {
            "median": round(statistics.median(times), 1),
            "min": round(min(times), 1),
            "max": round(max(times), 1),
        },
        "all_ms": [round(t, 1) for t in times],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--repeat", type=int, default=5, help="overhead rounds (median and range reported)"
    )
    parser.add_argument("--cold-runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        nats = LocalNats(Path(tmp) / "nats").start()
        stack = LocalStack(Path(tmp) / "data", nats.url, env={"BERTH_LOG_LEVEL": "WARNING"})
        try:
            stack.start()
            # The first cold start also fetches the model from the object store.
            first = measure_cold_start(stack, 1)
            cold = measure_cold_start(stack, args.cold_runs)
            overhead = measure_overhead(stack, nats.url, args.requests, args.warmup, args.repeat)
        finally:
            stack.close()
            nats.stop()

    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "overhead_concurrency_1": overhead,
        "cold_start_cached_model": cold,
        "cold_start_first_fetch": first,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    o = overhead
    print(json.dumps(result, indent=2))
    print(f"\n{o['rounds']} rounds of {o['requests_per_round']} requests; median round [min–max]\n")
    print("| ms, concurrency 1 | p50 | p90 | p99 |\n|---|---|---|---|")
    for label, key in (
        ("direct to replica", "direct_ms"),
        ("through Berth", "berth_ms"),
        ("added by Berth", "added_ms"),
    ):
        cells = [
            f"{o[key][q]['median']} [{o[key][q]['min']}–{o[key][q]['max']}]"
            for q in ("p50", "p90", "p99")
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    c = cold["ms"]
    print(
        f"\ncold start, zero replicas → response: median {c['median']} ms (min {c['min']}, max {c['max']}, {cold['runs']} runs); "
        f"first fetch of the model: {first['ms']['median']} ms"
    )


if __name__ == "__main__":
    main()
