"""Two (or more) revisions of Berth measured against each other, alternating, in one run.

    python -m bench.ab HEAD~1 .  [--rounds 6] [--requests 1000] [--seconds 8]

This machine's speed drifts by tens of per cent within minutes, more than most
changes are worth; runs of one tree after the other measure the drift. Here
every revision runs its own nats-server, API, scaler, agent and echo replicas
(2 × concurrency 8) side by side, idle but for the one being measured, and the
rounds alternate between them (the order flips each round), so drift hits all
alike. Each round measures:

* c=1: ``--requests`` sequential requests through each revision's Berth and as
  many straight to that revision's replica, every revision's calls interleaved
  in a shuffled order; the added latency is the difference of percentiles;
* c=64: wrk for ``--seconds``, with the CPU time of Berth's processes (API, span exporters,
  agent, scaler, nats-server) per request;
* with ``--paced RATE``, also wrk at about RATE req/s for ``--seconds`` (16 connections,
  each pausing between requests), and the same CPU per request. At c=64 the stack is
  saturated, where a change that costs CPU also lowers the throughput, and every
  process then does less per wakeup (smaller batches): its CPU per request rises by
  more than the change's own cost. At a steady rate below saturation, both trees
  serve the same load, and the difference is the change's cost.

Every round starts every revision's stack afresh (in turn, the order flipping too):
two stacks of the *same* tree, each kept for a whole run, differed by 0.17 ms at
c=1 p50 in every round, more than most changes, so a stack's own luck (where its
processes landed, its memory layout) must vary from round to round like the
machine's drift. ``--keep-stacks`` skips that, for quick looks at c=64.

A revision is a git revision (checked out into a temporary worktree) or ``.``
for the working tree as it is, optionally with environment variables for its stack
after a ``+``: ``.+OTEL_EXPORTER_OTLP_ENDPOINT={sink}`` measures the working tree with
every request traced, its spans sent to an OTLP/HTTP sink this script runs (it reads
and drops them; ``{sink}`` is its address). Every tree runs with this interpreter, so their
dependencies must match, and must have bench.harness and bench.overhead (this
script itself need not be there). Loopback only; the stacks stop when the run
ends.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def serve(replicas: int, per: int) -> None:
    """One tree's stack; a round per command on stdin, its result as a JSON line.

    Run as a script from the tree's root: everything below is imported from that
    tree (its Berth, and its bench helpers, which a revision must have).
    """
    sys.path[0] = os.getcwd()
    import asyncio

    from bench import FAST, overhead
    from bench.harness import cpu_seconds, wrk
    from bench.overhead import ECHO
    from berth.local import LocalNats, LocalStack, wait_until

    with tempfile.TemporaryDirectory(prefix="berth-ab-") as tmp:
        nats = LocalNats(Path(tmp) / "nats").start()
        env = {**FAST, "BERTH_LOG_LEVEL": "WARNING", "BERTH_DOCKER_HOST": "none"}
        stack = LocalStack(Path(tmp) / "berth", nats.url, env=env)
        try:
            stack.start()
            stack.deploy(
                "ab", ECHO, min_replicas=replicas, max_replicas=replicas,
                concurrency_per_replica=per,
            )  # fmt: skip
            wait_until(
                lambda: (
                    len([r for r in stack.replicas("ab") if r["status"] == "running"]) == replicas
                ),
                60,
                "the replicas",
            )
            if hasattr(overhead, "replica_target"):  # replicas with keys
                direct_url, direct_key = asyncio.run(
                    overhead.replica_target(nats.url, "ab", stack.data_dir)
                )
            else:
                direct_url, direct_key = asyncio.run(overhead.replica_url(nats.url, "ab")), None
            assert nats.proc is not None
            groups = {name: [proc.pid] for name, proc in stack.procs.items()}
            groups["nats"] = [nats.proc.pid]
            for name in list(groups):  # their span exporters' CPU is Berth's too
                if found := span_exporters(groups[name]):
                    groups[f"{name} export"] = found
            pids = [p for ps in groups.values() for p in ps]
            ready = {
                "ready": True,
                "berth": stack.url,
                "token": stack.token,
                "direct": direct_url,
                "direct_key": direct_key,
            }
            print(json.dumps(ready), flush=True)
            for line in sys.stdin:  # a round for each line: "<seconds>" or "paced <s> <rate>"
                url = f"{stack.url}/e/ab/infer"
                words = line.split()
                wrk(url, 64, 2, stack.token)  # warm the connections
                before = {pid: cpu_seconds(pid) for pid in pids}
                if words[0] == "paced":
                    result = paced(url, float(words[1]), float(words[2]), stack.token)
                else:
                    result = wrk(url, 64, float(words[0]), stack.token)
                used = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
                per = 1e6 / max(1, result["requests"])
                result["cpu_us"] = sum(used.values()) * per
                result["cpu_split"] = {
                    name: sum(used[pid] for pid in ps) * per for name, ps in groups.items()
                }
                print(json.dumps(result), flush=True)
        finally:
            stack.close()
            nats.stop()


PACED_CONNECTIONS = 16


def paced(url: str, seconds: float, rate: float, token: str) -> dict[str, Any]:
    """wrk at a steady ``rate`` (roughly: each of 16 connections pauses between its
    requests), well below saturation: the CPU per request of a path, without the
    batching that a saturated stack does and a slower one does less of."""
    here = Path(__file__).resolve().parent
    delay = max(0.0, PACED_CONNECTIONS * 1000 / rate - 1.0)  # less about a request's own ms
    env = {
        **os.environ,
        "BODY": '{"prompt":"hello","n":2}',
        "TOKEN": token,
        "WRK_POST_SCRIPT": str(here / "wrk_post.lua"),
        "DELAY_MS": f"{delay:.3f}",
    }
    cmd = ["wrk", "-t1", f"-c{PACED_CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "10s"]
    out = subprocess.run(
        [*cmd, "-s", str(here / "wrk_paced.lua"), url],
        capture_output=True, text=True, env=env, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    r: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def span_exporters(pids: list[int]) -> list[int]:
    """The span exporter children (workers/span_export.py) of these processes, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            if parent not in pids:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if b"--berth-span-export" in fh.read():
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _sink() -> str:
    """An OTLP/HTTP endpoint that reads what it is sent and drops it: its address."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Drop(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


def interleaved(urls: dict[str, dict[str, Any]], requests: int, seed: int) -> dict[str, Any]:
    """A c=1 round: each revision's added latency, its requests interleaved with the others'.

    Each step calls every revision's stack once through Berth and once straight to
    its replica, in an order shuffled afresh each step. A fixed order biases: a
    request right after one to the same stack finds its processes warm, and
    a rotation whose parity matched the direct/Berth alternation's gave one of two
    identical trees that luck every time (0.2 ms at p50).
    """
    from bench.overhead import Conn, summary

    # New connections each round: an idle keep-alive one may have been closed.
    conns = {
        (rev, path): Conn(u["direct"], "/infer", replica_key=u.get("direct_key"))
        if path == "direct" else Conn(u["berth"], "/e/ab/infer", u["token"])
        for rev, u in urls.items()
        for path in ("direct", "berth")
    }  # fmt: skip
    times: dict[tuple[str, str], list[float]] = {call: [] for call in conns}
    calls = list(conns)
    rng = random.Random(seed)
    for i in range(100 + requests):  # the first 100 warm up
        rng.shuffle(calls)
        for call in calls:
            took = conns[call].post()
            if i >= 100:
                times[call].append(took)
    out = {}
    for rev in urls:
        d, b = summary(times[rev, "direct"]), summary(times[rev, "berth"])
        out[rev] = {"added_ms": {k: round(b[k] - d[k], 3) for k in d}}
    return out


def spread(values: list[float]) -> str:
    def fmt(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"

    return f"{fmt(statistics.median(values))} [{fmt(min(values))}–{fmt(max(values))}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("revisions", nargs="*", default=["HEAD", "."])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=1000, help="c=1 requests per round")
    p.add_argument("--seconds", type=float, default=8.0, help="c=64 load per round")
    p.add_argument(
        "--paced",
        type=float,
        default=0,
        metavar="RATE",
        help="also a round at about RATE req/s (below saturation): its CPU per request",
    )
    p.add_argument("--split", action="store_true", help="also the CPU per request of each process")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8, help="per replica")
    p.add_argument(
        "--keep-stacks",
        action="store_true",
        help="one stack per revision for the whole run (faster; see the module's notes)",
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.replicas, args.concurrency)
        return
    if len(args.revisions) < 2:
        p.error("give at least two revisions")
    if shutil.which("wrk") is None:
        sys.exit("c=64 rounds drive load with wrk: apt-get install wrk")

    envs: dict[str, dict[str, str]] = {}
    sink = _sink() if any("{sink}" in r for r in args.revisions) else ""
    for label in args.revisions:
        _, _, spec = label.partition("+")
        pairs = (kv.split("=", 1) for kv in spec.split(",") if kv)
        envs[label] = {k: v.replace("{sink}", sink) for k, v in pairs}

    with tempfile.TemporaryDirectory(prefix="berth-ab-trees-") as tmp:
        trees: dict[str, Path] = {}
        for i, label in enumerate(args.revisions):
            rev = label.partition("+")[0]
            if rev == ".":
                trees[label] = ROOT
                continue
            tree = Path(tmp) / f"t{i}"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), rev],
                cwd=ROOT, check=True, capture_output=True,
            )  # fmt: skip
            trees[label] = tree
        servers: dict[str, subprocess.Popen[str]] = {}
        urls: dict[str, dict[str, Any]] = {}
        results: dict[str, dict[str, list[dict[str, Any]]]] = {
            rev: {"c1": [], "c64": [], "paced": []} for rev in trees
        }

        def start(order: list[str]) -> None:
            for rev in order:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--serve"]
                cmd += ["--replicas", str(args.replicas), "--concurrency", str(args.concurrency)]
                proc = subprocess.Popen(
                    cmd,
                    cwd=trees[rev],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, **envs[rev]},
                )
                servers[rev] = proc
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if "ready" not in line:
                    sys.exit(f"{rev}: its stack did not start")
                urls[rev] = json.loads(line)

        def stop() -> None:
            for proc in servers.values():
                if proc.stdin is not None:
                    proc.stdin.close()
            for proc in servers.values():
                proc.wait(60)
            servers.clear()

        try:

            def ask(rev: str, command: str) -> dict[str, Any]:
                proc = servers[rev]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(command + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    sys.exit(f"{rev}: its stack stopped")
                return dict(json.loads(line))

            revs = list(trees)
            for r in range(args.rounds):
                order = revs if r % 2 == 0 else revs[::-1]
                if r == 0 or not args.keep_stacks:
                    stop()
                    start(order)
                c1s = interleaved(urls, args.requests, seed=r)
                for rev in order:
                    c1 = c1s[rev]
                    c64 = ask(rev, str(args.seconds))
                    results[rev]["c1"].append(c1)
                    results[rev]["c64"].append(c64)
                    line = (
                        f"round {r + 1} {rev}: added p50 {c1['added_ms']['p50']:.3f} ms, "
                        f"p99 {c1['added_ms']['p99']:.3f} ms; c=64 {c64['rps']:,.0f} req/s, "
                        f"{c64['cpu_us']:,.0f} µs CPU per request"
                    )
                    if args.paced:
                        slow = ask(rev, f"paced {args.seconds} {args.paced}")
                        results[rev]["paced"].append(slow)
                        line += f"; paced {slow['rps']:,.0f} req/s, {slow['cpu_us']:,.0f} µs"
                    print(line, flush=True)
        finally:
            stop()
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", str(tree)],
                        cwd=ROOT, check=False, capture_output=True,
                    )  # fmt: skip

    print(f"\n{args.rounds} alternating rounds; median [min–max]\n")
    head = "| revision | added p50, c=1 (ms) | added p99, c=1 (ms) | c=64 req/s | CPU µs/request, c=64 |"
    if args.paced:
        head += " paced req/s | CPU µs/request, paced |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for rev, res in results.items():
        p50 = [r["added_ms"]["p50"] for r in res["c1"]]
        p99 = [r["added_ms"]["p99"] for r in res["c1"]]
        rps = [float(r["rps"]) for r in res["c64"]]
        cpu = [r["cpu_us"] for r in res["c64"]]
        row = f"| {rev} | {spread(p50)} | {spread(p99)} | {spread(rps)} | {spread(cpu)} |"
        if args.paced:
            slow_rps = [float(r["rps"]) for r in res["paced"]]
            slow_cpu = [r["cpu_us"] for r in res["paced"]]
            row += f" {spread(slow_rps)} | {spread(slow_cpu)} |"
        print(row)
    if args.split:
        print("\nCPU µs per request by process, median of the rounds\n")
        rounds = [("c=64", "c64")] + ([("paced", "paced")] if args.paced else [])
        names = sorted(
            {n for res in results.values() for r in res["c64"] for n in r.get("cpu_split", {})}
        )
        head = "| revision | load | " + " | ".join(names) + " |"
        print(head)
        print("|---" * (head.count("|") - 1) + "|")
        for rev, res in results.items():
            for label, key in rounds:
                cells = [
                    f"{statistics.median(r['cpu_split'].get(n, 0.0) for r in res[key]):,.0f}"
                    for n in names
                ]
                print(f"| {rev} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
