"""What the Python SDK adds to a call: ``Client.infer`` against a bare ``httpx`` POST.

    python -m bench.sdk [--calls 2000] [--rounds 5]

Starts its own nats-server, API, scaler and agent on 127.0.0.1 with one warm replica
of the echo example, then alternates rounds of ``--calls`` sequential calls made
both ways (the same keep-alive connection pool, the same body and token), and
reports per call: the client process's CPU time (``time.process_time``, steady even
when the machine is not) and the wall-clock median. The SDK's cost is the difference.
Writes bench/results/sdk.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import httpx

from bench.harness import own_stack
from berth.local import ROOT


def measure(call: Any, calls: int) -> tuple[float, float]:
    """(CPU µs per call in this process, wall-clock median µs)."""
    walls: list[float] = []
    cpu = time.process_time()
    for _ in range(calls):
        began = time.perf_counter()
        call()
        walls.append(time.perf_counter() - began)
    return (time.process_time() - cpu) / calls * 1e6, statistics.median(walls) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from berth import Client

    with own_stack("berth-bench-sdk-") as stack:
        headers = {"Authorization": f"Bearer {stack.token}"}
        with httpx.Client(headers=headers, timeout=60) as bare:
            bare.post(
                f"{stack.url}/v1/endpoint",
                json={"name": "echo", "example": "echo", "min_replicas": 1, "max_replicas": 1},
            ).raise_for_status()
            sdk = Client(stack.url, stack.token, timeout=60)
            sdk.wait_until_ready("echo", timeout=120)
            body = {"prompt": "hi"}

            url = f"{stack.url}/e/echo/infer"  # a whole URL, as the SDK builds it

            def plain() -> Any:
                resp = bare.post(url, json=body)
                resp.raise_for_status()
                return resp.json()

            def via_sdk() -> Any:
                return sdk.infer("echo", body)

            for fn in (plain, via_sdk):  # warm both paths
                measure(fn, 200)
            rows: dict[str, list[tuple[float, float]]] = {"httpx": [], "sdk": []}
            for r in range(args.rounds):
                order = [("httpx", plain), ("sdk", via_sdk)]
                for label, fn in order if r % 2 == 0 else order[::-1]:
                    rows[label].append(measure(fn, args.calls))
            sdk.close()
    result: dict[str, Any] = {"calls": args.calls, "rounds": args.rounds}
    for label, got in rows.items():
        result[label] = {
            "cpu_us": statistics.median(c for c, _ in got),
            "p50_us": statistics.median(w for _, w in got),
        }
    result["sdk_cpu_us_per_call"] = result["sdk"]["cpu_us"] - result["httpx"]["cpu_us"]
    result["sdk_p50_us_per_call"] = result["sdk"]["p50_us"] - result["httpx"]["p50_us"]
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "sdk.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
