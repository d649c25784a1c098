"""Figures for a multi-instance install, on this machine:

1. **Through a load balancer** (HAProxy, tests/balancer.py): one API called directly,
   one API behind HAProxy, two APIs behind HAProxy. Added p50 at c=1 over the replica
   alone is not repeated here (bench.harness does it); this gives each setup's p50 at
   c=1, req/s at c=64 and CPU per request of every Berth process and HAProxy together.
2. **R3 against R1**: the same three-node JetStream cluster with Berth's streams, buckets
   and object stores kept as one copy (BERTH_NATS_REPLICAS=1) and as three, and a single
   nats-server for reference: the same figures, CPU including every nats-server.

    python -m bench.multihost [--seconds 5] [--rounds 3] [--part lb|replicas|all]

Needs wrk and haproxy (Debian packages). Writes bench/results/multihost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import FAST
from bench.harness import ECHO, cpu_seconds, spread, wrk
from berth.local import ROOT, LocalNats, LocalStack, wait_until
from tests.balancer import HAProxy
from tests.cluster import Cluster, js_ready

RESULTS = ROOT / "bench" / "results" / "multihost.json"
ENV = {**FAST, "BERTH_LOG_LEVEL": "WARNING", "BERTH_DOCKER_HOST": "none"}


def _deploy(stack: LocalStack, name: str = "mh-echo", replicas: int = 2) -> str:
    stack.deploy(
        name,
        ECHO,
        min_replicas=replicas,
        max_replicas=replicas,
        concurrency_per_replica=8,
        scale_to_zero=600,
    )
    wait_until(
        lambda: len([r for r in stack.replicas(name) if r["status"] == "running"]) == replicas,
        60,
        "the endpoint's replicas",
    )
    return name


def _measure(
    url: str, token: str, groups: dict[str, list[int]], seconds: float, rounds: int
) -> dict[str, Any]:
    """p50 at c=1 and req/s at c=64, with the CPU µs per request of every group of
    processes (and of all of them together, "all")."""
    wrk(url, 8, 1, token)  # warm-up
    out: dict[str, Any] = {}
    for c in (1, 64):
        rps, p50, errors = [], [], 0
        cpu: dict[str, list[float]] = {name: [] for name in [*groups, "all"]}
        for _ in range(rounds):
            before = {n: sum(cpu_seconds(p) for p in ps) for n, ps in groups.items()}
            r = wrk(url, c, seconds, token)
            used = {n: sum(cpu_seconds(p) for p in ps) - before[n] for n, ps in groups.items()}
            used["all"] = sum(used.values())
            for n, v in used.items():
                cpu[n].append(v / max(1, r["requests"]) * 1e6)
            rps.append(r["rps"])
            p50.append(r["p50_us"] / 1000)
            errors += r["socket_errors"] + r["non_2xx"]
        out[f"c{c}"] = {
            "rps": spread(rps, 0),
            "p50_ms": spread(p50, 2),
            "cpu_us_per_request": spread(cpu["all"], 0),
            "cpu_us_per_request_by_group": {n: spread(v, 0) for n, v in cpu.items()},
            "errors": errors,
        }
    return out


def _berth_pids(stack: LocalStack) -> list[int]:
    return [p.pid for p in stack.procs.values()]


def through_a_balancer(seconds: float, rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mh-") as tmp:
        work = Path(tmp)
        nats = LocalNats(work / "nats").start()
        stack = LocalStack(work / "berth", nats.url, env=ENV)
        try:
            stack.start("api", "api:b", "scaler", "agent")
            name = _deploy(stack)
            path = f"/e/{name}/infer"
            base = {
                "berth": _berth_pids(stack),
                "nats-server": [nats.proc.pid] if nats.proc else [],
            }
            result["one API, direct"] = _measure(
                stack.url + path, stack.token, base, seconds, rounds
            )
            for label, backends in (
                ("one API behind HAProxy", {"a": stack.apis["api"]}),
                ("two APIs behind HAProxy", {"a": stack.apis["api"], "b": stack.apis["api:b"]}),
            ):
                lb = HAProxy(work / label.replace(" ", "-"), backends).start()
                try:
                    groups = {**base, "haproxy": [lb.proc.pid] if lb.proc else []}
                    result[label] = _measure(lb.url + path, stack.token, groups, seconds, rounds)
                finally:
                    lb.stop()
                print(label, result[label], flush=True)
        finally:
            stack.close()
            nats.stop()
    return result


@contextlib.contextmanager
def _cluster(work: Path) -> Iterator[tuple[str, list[int]]]:
    cluster = Cluster(work)
    try:
        cluster.start()
        wait_until(lambda: asyncio.run(js_ready(cluster.url)), 60, "the cluster's JetStream")
        yield cluster.url, [n.proc.pid for n in cluster.nodes.values() if n.proc]
    finally:
        cluster.stop()


@contextlib.contextmanager
def _single(work: Path) -> Iterator[tuple[str, list[int]]]:
    nats = LocalNats(work / "nats").start()
    try:
        yield nats.url, [nats.proc.pid] if nats.proc else []
    finally:
        nats.stop()


def replicated(seconds: float, rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for label, servers, copies in (
        ("one nats-server, R1", _single, 1),
        ("three-node cluster, R1", _cluster, 1),
        ("three-node cluster, R3", _cluster, 3),
    ):
        with (
            tempfile.TemporaryDirectory(prefix="bench-r3-") as tmp,
            servers(Path(tmp)) as (
                url,
                nats_pids,
            ),
        ):
            env = {**ENV, "BERTH_NATS_REPLICAS": str(copies)}
            stack = LocalStack(Path(tmp) / "berth", url, env=env)
            try:
                stack.start()
                name = _deploy(stack)
                groups = {"berth": _berth_pids(stack), "nats-server": nats_pids}
                result[label] = _measure(
                    f"{stack.url}/e/{name}/infer", stack.token, groups, seconds, rounds
                )
            finally:
                stack.close()
        print(label, result[label], flush=True)
    return result


def idle_agents(
    counts: tuple[int, ...] = (1, 8), endpoints: int = 4, seconds: float = 20
) -> dict[str, Any]:
    """What idle agents cost NATS: a nats-server, an API and a scaler with ``endpoints``
    endpoints at min 0 (nothing running), and N agents heartbeating and pulling; the
    nats-server's CPU per second and per agent over ``seconds``."""
    result: dict[str, Any] = {}
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="bench-agents-") as tmp:
            nats = LocalNats(Path(tmp) / "nats").start()
            stack = LocalStack(Path(tmp) / "berth", nats.url, env=ENV)
            try:
                stack.start("api", "scaler", *[f"agent:{i}" for i in range(n)])
                for e in range(endpoints):
                    stack.deploy(f"idle-{e}", ECHO, min_replicas=0, max_replicas=1)
                time.sleep(5)  # settle: every agent registered and pulling
                assert nats.proc is not None
                agents = [p.pid for name, p in stack.procs.items() if name.startswith("agent")]
                before_nats, before_agents = (
                    cpu_seconds(nats.proc.pid),
                    sum(map(cpu_seconds, agents)),
                )
                time.sleep(seconds)
                nats_cpu = (cpu_seconds(nats.proc.pid) - before_nats) / seconds
                agents_cpu = (sum(map(cpu_seconds, agents)) - before_agents) / seconds
                result[f"{n} agent(s)"] = {
                    "nats_server_cpu_ms_per_s": round(nats_cpu * 1000, 1),
                    "agents_cpu_ms_per_s": round(agents_cpu * 1000, 1),
                }
                print(n, result[f"{n} agent(s)"], flush=True)
            finally:
                stack.close()
                nats.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=("lb", "replicas", "agents", "all"), default="all")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if args.part in ("lb", "all"):
        out["balancer"] = through_a_balancer(args.seconds, args.rounds)
    if args.part in ("replicas", "all"):
        out["replication"] = replicated(args.seconds, args.rounds)
    if args.part in ("agents", "all"):
        out["idle_agents"] = idle_agents()
        print(json.dumps(out["idle_agents"], indent=2))
        if args.part == "agents":
            return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    for part in out.values():
        print(
            "| setup | p50 c=1 ms | req/s c=64 | CPU µs/request c=64 (of it nats-server) | errors |"
        )
        print("|---|---|---|---|---|")
        for label, r in part.items():
            print(
                f"| {label} | {r['c1']['p50_ms']['median']} | {r['c64']['rps']['median']:.0f} "
                f"[{r['c64']['rps']['min']:.0f}–{r['c64']['rps']['max']:.0f}] | "
                f"{r['c64']['cpu_us_per_request']['median']:.0f} "
                f"({r['c64']['cpu_us_per_request_by_group']['nats-server']['median']:.0f}) | "
                f"{r['c1']['errors'] + r['c64']['errors']} |"
            )


if __name__ == "__main__":
    main()
