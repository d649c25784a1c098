"""Async jobs through kills: nothing accepted is lost, and how long a kill stalls work.

    python -m bench.chaos [--jobs 2000] [--rate 40] [--every 6] [--seed 1]

Starts its own nats-server, API, scaler and two agents on 127.0.0.1 (nothing else
is contacted), deploys the tests' probe model (2 to 4 replicas, 2 requests each)
and submits ``--jobs`` async jobs (``X-OctoAI-Async: 1``, each sleeping 0.2 s in
the model, which logs every run) at ``--rate`` a second. Every ``--every`` seconds it kills one thing with
SIGKILL, in turn: a replica, an agent (restarted at once, as a service manager
would), nats-server (restarted on the same store) and the API (restarted). A
submission refused while the API or nats-server is down is sent again with the
same Idempotency-Key, as a careful client does; a job counts once it got its 202.

Then every accepted job is polled until it ends. Reported: jobs accepted,
completed, failed (with their reasons), never ended (lost), how many ran more
than once (a run cut short by a killed replica or agent is run again: expected),
and per kill the longest time a job
accepted before it waited from its acceptance to its start after the kill.
Exits 1 if any job was lost. Loopback only; bounded by ``--jobs`` and a
10-minute limit on the wait for the last job.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench import FAST
from bench.harness import direct_children as children
from berth.local import ROOT, LocalNats, LocalStack, wait_until

ENDPOINT = "chaos"
TERMINAL = {"completed", "failed", "cancelled", "expired"}
KILLS = ("replica", "agent", "nats-server", "api")


def replica_pids(stack: LocalStack) -> list[int]:
    """Every replica process: the zygote's children under each agent."""
    pids = []
    for name, proc in stack.procs.items():
        if name.startswith("agent"):
            for zygote in children(proc.pid):
                pids += children(zygote) or [zygote]
    return pids


class Chaos:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.nats = LocalNats(work / "nats")
        # Production's ack_wait and held_wait: what a dead agent costs is part of the figure.
        env = {**FAST, "BERTH_LOG_LEVEL": args.log_level, "BERTH_DOCKER_HOST": "none"}
        env["BERTH_SLOTS"] = "4"
        self.runs = work / "runs" / "runs.log"  # every run of a job, by the model itself
        self.runs.parent.mkdir(parents=True)
        self.runs.parent.chmod(0o777)
        env["BERTH_REPLICA_WRITABLE"] = str(self.runs.parent)
        self.work = work
        self.stack: LocalStack | None = None
        self.env = env
        self.accepted: dict[str, float] = {}  # response_id → accepted at
        self.refused: Counter[str] = Counter()
        self.kills: list[tuple[str, float, float]] = []  # what, killed at, back at
        self.lock = threading.Lock()

    def start(self) -> LocalStack:
        self.nats.start()
        stack = LocalStack(self.work / "berth", self.nats.url, env=self.env)
        stack.start("api", "scaler", "agent:a", "agent:b")
        self.stack = stack
        with stack.client() as c:
            wait_until(
                lambda: c.get("/v1/instance-types").json()[0]["total"] == 8, 30, "both agents"
            )
        stack.deploy(
            ENDPOINT,
            ROOT / "tests" / "models" / "probe",
            min_replicas=2,
            max_replicas=4,
            concurrency_per_replica=2,
            scale_to_zero=600,
        )
        wait_until(
            lambda: len([r for r in stack.replicas(ENDPOINT) if r["status"] == "running"]) >= 2,
            60,
            "two replicas",
        )
        return stack

    def submit(self, i: int) -> None:
        assert self.stack is not None
        key = str(uuid.uuid4())
        body = {"prompt": f"j{i}", "sleep": 0.2, "log": str(self.runs)}
        headers = {
            "Authorization": f"Bearer {self.stack.token}",
            "X-OctoAI-Async": "1",
            "Idempotency-Key": key,
        }
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                resp = httpx.post(
                    f"{self.stack.url}/e/{ENDPOINT}/infer", json=body, headers=headers, timeout=10
                )
            except httpx.HTTPError as exc:
                with self.lock:
                    self.refused[type(exc).__name__] += 1
                time.sleep(0.5)
                continue
            if resp.status_code == 202:
                with self.lock:
                    self.accepted[resp.json()["response_id"]] = time.time()
                return
            with self.lock:
                self.refused[str(resp.status_code)] += 1
            time.sleep(0.5)
        with self.lock:
            self.refused["gave up"] += 1

    def kill(self, what: str) -> None:
        stack = self.stack
        assert stack is not None
        at = time.time()
        if what == "replica":
            pids = replica_pids(stack)
            if not pids:
                return
            os.kill(random.choice(pids), signal.SIGKILL)
        elif what == "agent":
            name = random.choice([n for n in stack.procs if n.startswith("agent")])
            stack.stop(name, sig=signal.SIGKILL)
            stack.start(name)
        elif what == "nats-server":
            assert self.nats.proc is not None
            self.nats.proc.kill()
            self.nats.proc.wait(10)
            self.nats.start()
        elif what == "api":
            stack.stop("api", sig=signal.SIGKILL)
            stack.start("api")
        self.kills.append((what, at, time.time()))

    def run(self) -> dict[str, Any]:
        args = self.args
        stack = self.start()
        began = time.time()

        def submit_all() -> None:
            with ThreadPoolExecutor(32) as pool:
                for i in range(args.jobs):
                    pool.submit(self.submit, i)
                    time.sleep(1 / args.rate)

        # Kills and restarts from this thread: a process started with a parent-death
        # signal (berth.local) dies with the thread that started it.
        kills = args.kills.split(",")
        submitter = threading.Thread(target=submit_all)
        submitter.start()
        n = 0
        while True:
            submitter.join(args.every)
            if not submitter.is_alive():
                break
            self.kill(kills[n % len(kills)])
            n += 1
        submitted_s = time.time() - began

        # Every accepted job, until it ends (or 10 minutes pass).
        pending = set(self.accepted)
        records: dict[str, dict[str, Any]] = {}
        limit = time.monotonic() + 600
        with httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=10
        ) as c:
            while pending and time.monotonic() < limit:
                if args.debug:
                    print(len(pending), c.get(f"/v1/requests/{next(iter(pending))}").text[:300])
                for rid in list(pending):
                    try:
                        resp = c.get(f"/v1/requests/{rid}")
                    except httpx.HTTPError:
                        time.sleep(0.5)
                        continue
                    if resp.status_code != 200:
                        self.refused[f"poll {resp.status_code}"] += 1
                    elif resp.json()["status"] in TERMINAL:
                        records[rid] = resp.json()
                        pending.discard(rid)
                if pending:
                    time.sleep(1)
        statuses = Counter(r["status"] for r in records.values())
        reasons = Counter(
            (r.get("error") or r.get("reason") or "")[:80]
            for r in records.values()
            if r["status"] != "completed"
        )
        stalls = []
        for what, at, back in self.kills:
            started = [
                (r.get("started_at") or 0) - max(self.accepted[rid], at)
                for rid, r in records.items()
                if self.accepted[rid] <= back and (r.get("started_at") or 0) >= at
            ]
            stalls.append(
                {
                    "kill": what,
                    "at_s": round(at - began, 1),
                    "down_s": round(back - at, 2),
                    "longest_wait_s": round(max(started, default=0.0), 2),
                }
            )
        runs = Counter(self.runs.read_text().split()) if self.runs.exists() else Counter()
        return {
            "jobs": args.jobs,
            "accepted": len(self.accepted),
            "submission_refusals": dict(self.refused),
            "submitted_in_s": round(submitted_s, 1),
            "statuses": dict(statuses),
            "not_completed_reasons": dict(reasons),
            "lost": len(pending),
            "ran_more_than_once": sum(1 for n in runs.values() if n > 1),
            "kills": stalls,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=40.0, help="jobs submitted per second")
    parser.add_argument("--every", type=float, default=6.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument(
        "--kills", default=",".join(KILLS), help=f"what to kill, in turn (of {', '.join(KILLS)})"
    )
    parser.add_argument("--log-level", default="WARNING", help="the stack's BERTH_LOG_LEVEL")
    parser.add_argument("--keep", type=Path, help="work here and keep the logs (a new folder)")
    args = parser.parse_args()
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="berth-chaos-") as tmp:
        chaos = Chaos(args, args.keep or Path(tmp))
        try:
            result = chaos.run()
        finally:
            if chaos.stack is not None:
                chaos.stack.close()
            chaos.nats.stop()
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / "chaos.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    raise SystemExit(1 if result["lost"] else 0)


if __name__ == "__main__":
    main()
