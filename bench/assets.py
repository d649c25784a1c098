"""The asset library's figures: upload throughput through the API, and the cold start
of a replica whose endpoint mounts a large asset, uncached and cached.

    python -m bench.assets [--mib 200] [--rounds 3]

Starts its own nats-server, API, scaler and agent on 127.0.0.1. Uploads ``--mib`` MiB
(streamed, never whole in memory) ``--rounds`` times to fresh assets, timing the PUT
to the presigned URL (spool to disk with sha256, then the JetStream object store).
Then times endpoint creation to a ready replica (min_replicas 1) three ways: the
same model without the asset, with it uncached on the agent, and with it cached
(a second endpoint naming the same asset). Writes bench/results/assets.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx

from bench.harness import own_stack
from berth.local import ROOT
from shared.packing import pack_dir

MODEL = ROOT / "tests" / "models" / "assets"


def _body(mib: int) -> Iterator[bytes]:
    block = os.urandom(1024 * 1024)
    for i in range(mib):
        yield block[:-8] + i.to_bytes(8, "big")


def upload(c: httpx.Client, name: str, mib: int) -> float:
    """Seconds for the PUT of ``mib`` MiB to a new asset (which ends ready)."""
    made = c.post(
        "/v1/assets", json={"name": name, "asset_type": "file", "data": {"asset_type": "file"}}
    ).json()
    began = time.perf_counter()
    put = httpx.put(
        made["transfer_api"]["put_url"],
        content=_body(mib),
        headers={"content-length": str(mib * 1024 * 1024)},
        timeout=600,
    )
    took = time.perf_counter() - began
    put.raise_for_status()
    c.post(f"/v1/assets/{made['asset']['id']}/complete-upload", json={}).raise_for_status()
    return took


def cold_start(c: httpx.Client, name: str, model_id: str, assets: list[str]) -> float:
    """Seconds from creating an endpoint (one replica) to its replica answering ready."""
    began = time.perf_counter()
    c.post(
        "/v1/endpoint",
        json={
            "name": name,
            "model_id": model_id,
            "min_replicas": 1,
            "max_replicas": 1,
            "assets": assets,
        },
    ).raise_for_status()
    deadline = began + 300
    while time.perf_counter() < deadline:
        replicas = c.get(f"/v1/endpoint/{name}").json()["replicas"]
        if any(r["status"] == "running" for r in replicas):
            return time.perf_counter() - began
        time.sleep(0.02)
    raise TimeoutError(f"{name} was not ready in 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with own_stack("berth-bench-assets-") as stack:
        headers = {"Authorization": f"Bearer {stack.token}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=120) as c:
            seconds = [upload(c, f"big-{i}", args.mib) for i in range(args.rounds)]
            rates = [args.mib / s for s in seconds]
            model = c.post("/v1/models", content=pack_dir(MODEL)).json()["model_id"]
            plain = cold_start(c, "plain", model, [])
            uncached = cold_start(c, "uncached", model, ["big-0"])
            cached = cold_start(c, "cached", model, ["big-0"])
    result: dict[str, Any] = {
        "mib": args.mib,
        "upload_mib_per_s": [round(r, 1) for r in rates],
        "upload_mib_per_s_median": round(statistics.median(rates), 1),
        "cold_start_s": {
            "without_asset": round(plain, 2),
            "asset_uncached": round(uncached, 2),
            "asset_cached": round(cached, 2),
        },
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "assets.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
