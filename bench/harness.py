"""Issue #7's harness: Berth against a bare uvicorn echo and Ray Serve, same machine, same run.

    python -m bench.harness [--duration 5] [--repeat 3] [--skip-ray] [--container]

Starts what it needs on 127.0.0.1 and nothing else: the baselines, a nats-server
and Berth's processes. Load comes from ``wrk`` (Debian's package; one thread, a
separate process) for a fixed time per run, so every run is bounded. For each
figure the run is repeated and the median and range are reported. Writes
``bench/results/harness.json`` and ``bench/results/harness.md``.

Measured, for the same echo model everywhere (``{"prompt", "n"}`` → ``{"output": {"text"}}``):

- throughput (req/s) and latency at concurrency 1, 8 and 64, for the bare uvicorn
  app, Berth, and Ray Serve with its default deployment options and tuned
  (``max_ongoing_requests=64``);
- Berth's added latency at concurrency 1 (against the same replica called directly);
- CPU per request, summed over Berth's processes (API, agent, scaler, nats-server),
  and the replicas' apart;
- each Berth process's resident memory, idle and at its peak under load;
- cold start (process runtime; the container runtime with ``--container``);
- scale-up reaction: a burst on an endpoint at zero, max 4: when the 4th start was issued;
- queue drain: 10,000 queued async jobs, then replicas allowed: jobs per second.

Ray Serve is installed by the harness into its own virtualenv (``--ray-venv``,
default ``~/.cache/berth-bench/ray``) on first use; if that fails, it is skipped
and the result says why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import FAST
from bench.overhead import measure_cold_start, measure_overhead
from bench.scaler import burst
from berth.local import ROOT, LocalNats, LocalStack, free_port, wait_until
from broker.connection import connect
from broker.jetstream import backlog

ECHO = ROOT / "examples" / "echo"
WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
BODY = '{"prompt":"hello","n":2}'
CONCURRENCY = (1, 8, 64)
RAY_VERSION = "2.60.0"


# -- measuring ----------------------------------------------------------------------------


@contextlib.contextmanager
def own_stack(prefix: str) -> Iterator[LocalStack]:
    """A nats-server, API, scaler and agent of their own on 127.0.0.1, for one script."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        nats = LocalNats(Path(tmp) / "nats")
        nats.start()
        stack = LocalStack(
            Path(tmp) / "berth", nats.url, env={**FAST, "BERTH_LOG_LEVEL": "WARNING"}
        )
        try:
            stack.start()
            yield stack
        finally:
            stack.close()
            nats.stop()


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def wrk(url: str, concurrency: int, seconds: float, token: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "BODY": BODY, "TOKEN": token or ""}
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s"]
    out = subprocess.run(
        [*cmd, "-s", str(WRK_SCRIPT), url],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    r: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def direct_children(pid: int) -> list[int]:
    """The process's own children, from /proc (an agent's zygotes, a zygote's replicas)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the replicas under an agent)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Sampler:
    """Peak resident memory of named processes, sampled every 100 ms while in use."""

    def __init__(self, pids: dict[str, list[int]]):
        self.pids = pids
        self.peak = {name: 0.0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, pids in self.pids.items():
                self.peak[name] = max(self.peak[name], sum(rss_mib(p) for p in pids))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def throughput(
    url: str,
    seconds: float,
    repeat: int,
    token: str | None = None,
    cpu_of: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """req/s and latency per concurrency; with ``cpu_of``, CPU µs per request per group."""
    wrk(url, 8, 1, token)  # warm-up: connections, caches, JIT-less but lazy imports
    out: dict[str, Any] = {}
    for c in CONCURRENCY:
        runs, cpu = [], {name: [] for name in cpu_of or {}}
        for _ in range(repeat):
            before = {n: sum(cpu_seconds(p) for p in ps) for n, ps in (cpu_of or {}).items()}
            r = wrk(url, c, seconds, token)
            for n, ps in (cpu_of or {}).items():
                used = sum(cpu_seconds(p) for p in ps) - before[n]
                cpu[n].append(used / max(1, r["requests"]) * 1e6)
            runs.append(r)
        out[str(c)] = {
            "rps": spread([r["rps"] for r in runs], 0),
            "p50_ms": spread([r["p50_us"] / 1000 for r in runs], 2),
            "p99_ms": spread([r["p99_us"] / 1000 for r in runs], 2),
            "errors": sum(r["socket_errors"] + r["non_2xx"] for r in runs),
            "requests": sum(r["requests"] for r in runs),
        }
        if cpu_of:
            out[str(c)]["cpu_us_per_request"] = {n: spread(v, 0) for n, v in cpu.items()}
    return out


@contextlib.contextmanager
def process(
    cmd: list[str], ready: Callable[[], bool], what: str, **kw: Any
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, **kw)
    try:
        wait_until(lambda: proc.poll() is not None or ready(), 180, what)
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: exited with {proc.returncode}")
        yield proc
    finally:
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def answers(url: str) -> bool:
    try:
        return httpx.post(url, content=BODY, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- the systems ----------------------------------------------------------------------------


def bench_uvicorn(seconds: float, repeat: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/infer"
    cmd = [sys.executable, "-m", "bench.baselines.uvicorn_echo", str(port)]
    with process(cmd, lambda: answers(url), "the uvicorn echo", cwd=ROOT):
        return {"throughput": throughput(url, seconds, repeat)}


def ray_python(venv: Path) -> tuple[Path | None, str]:
    """Ray Serve's interpreter, installing it on first use; None and the reason if it cannot."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import ray, ray.serve; print(ray.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python, ""
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"ray[serve]=={RAY_VERSION}"],
            check=True,
            timeout=1800,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return None, f"could not install ray[serve]=={RAY_VERSION}: {exc}"
    return python, ""


def bench_ray(python: Path, seconds: float, repeat: int, ongoing: int | None) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/infer"
    cmd = [str(python), str(Path(__file__).with_name("baselines") / "ray_echo.py"), str(port)]
    if ongoing:
        cmd.append(str(ongoing))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.monotonic()
    with process(
        cmd,
        lambda: answers(url),
        "Ray Serve",
        env=env,
        cwd=tempfile.gettempdir(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ):
        start_s = time.monotonic() - started
        result = {"throughput": throughput(url, seconds, repeat), "start_s": round(start_s, 1)}
    subprocess.run([str(python.parent / "ray"), "stop", "--force"], capture_output=True)
    return result


async def _fill_queue(stack: LocalStack, name: str, count: int, connections: int = 32) -> None:
    """``count`` async submissions over ``connections`` kept-alive connections.

    Plain HTTP/1.1 on asyncio streams: httpx managed about 170 submissions a
    second here, a sixth of what the API takes, so it measured itself.
    """
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    request = (
        f"POST /e/{name}/infer HTTP/1.1\r\nhost: {host}\r\n"
        f"authorization: Bearer {stack.token}\r\nx-octoai-async: 1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n{BODY}"
    ).encode()
    left = count

    async def submitter() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while left > 0:
                left -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 202 "):
                    raise RuntimeError(f"a submission was refused: {head[:200]!r}")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
        finally:
            writer.close()

    async with asyncio.timeout(600):
        await asyncio.gather(*(submitter() for _ in range(connections)))


async def _drain(stack: LocalStack, nats_url: str, name: str, replicas: int) -> dict[str, float]:
    """Allow ``replicas``, then watch the endpoint's consumer (one connection) until it is empty."""
    broker = await connect(nats_url, "bench")
    try:
        before = await backlog(broker, name)
        async with httpx.AsyncClient(
            base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}
        ) as c:
            allow = {"min_replicas": replicas, "max_replicas": replicas}
            (await c.patch(f"/v1/endpoint/{name}", json=allow)).raise_for_status()
        allowed = time.monotonic()
        first: float | None = None
        while True:
            now = time.monotonic()
            waiting = await backlog(broker, name)
            assert waiting is not None
            if first is None and waiting.delivered:
                first = now
            if waiting.queued == 0 and waiting.in_flight == 0:
                break
            if now - allowed > 600:
                raise RuntimeError("the queue did not drain in 10 minutes")
            await asyncio.sleep(0.05)
        assert first is not None
        return {
            "queued_before": before.queued if before else 0,
            "first_delivery_after_s": first - allowed,
            "drain_s": time.monotonic() - first,
        }
    finally:
        await broker.close()


def queue_drain(stack: LocalStack, nats_url: str, count: int, replicas: int) -> dict[str, Any]:
    """``count`` async jobs queued on an endpoint that may not run yet; then ``replicas`` allowed."""
    name = "bench-drain"
    stack.deploy(name, ECHO, min_replicas=0, max_replicas=0, concurrency_per_replica=8)
    t0 = time.monotonic()
    asyncio.run(_fill_queue(stack, name, count))
    fill_s = time.monotonic() - t0
    d = asyncio.run(_drain(stack, nats_url, name, replicas))
    with stack.client() as c:
        c.delete(f"/v1/endpoint/{name}")
    return {
        "jobs": count,
        "queued_before": d["queued_before"],
        "replicas": f"{replicas} × concurrency 8",
        "submit_s": round(fill_s, 1),
        "submitted_per_s": round(count / fill_s, 0),
        "first_delivery_after_s": round(d["first_delivery_after_s"], 2),
        "drain_s": round(d["drain_s"], 2),
        "jobs_per_s": round(count / d["drain_s"], 0),
    }


def bench_berth(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    nats = LocalNats(work / "nats").start()
    env = {**FAST, "BERTH_LOG_LEVEL": "WARNING", "BERTH_DOCKER_HOST": "none"}
    stack = LocalStack(work / "berth", nats.url, env=env)
    result: dict[str, Any] = {}
    try:
        stack.start()
        result["cold_start_process"] = measure_cold_start(stack, args.cold_runs)
        print("cold start:", result["cold_start_process"]["ms"], flush=True)
        result["overhead_c1"] = measure_overhead(stack, nats.url, args.requests, 100, args.repeat)
        print("overhead:", result["overhead_c1"]["added_ms"]["p50"], flush=True)
        with stack.client() as c:
            c.delete("/v1/endpoint/bench-echo")

        name = "bench-tp"
        replicas, per = args.berth_replicas, args.berth_concurrency
        stack.deploy(
            name, ECHO, min_replicas=replicas, max_replicas=replicas, concurrency_per_replica=per
        )
        wait_until(
            lambda: len([r for r in stack.replicas(name) if r["status"] == "running"]) == replicas,
            60,
            "the throughput endpoint's replicas",
        )
        agent = stack.procs["agent"].pid
        berth_pids = {
            "api": [stack.procs["api"].pid],
            "agent": [agent],
            "scaler": [stack.procs["scaler"].pid],
            "nats-server": [nats.proc.pid] if nats.proc else [],
        }
        replica_pids = children(agent)
        result["memory_idle_mib"] = {
            n: round(sum(rss_mib(p) for p in ps), 1) for n, ps in berth_pids.items()
        }
        result["memory_idle_mib"]["replicas"] = round(sum(rss_mib(p) for p in replica_pids), 1)
        groups = {"berth": [p for ps in berth_pids.values() for p in ps], "replicas": replica_pids}
        groups.update(berth_pids)
        with Sampler({**berth_pids, "replicas": replica_pids}) as sampler:
            result["throughput"] = throughput(
                f"{stack.url}/e/{name}/infer", args.duration, args.repeat, stack.token, groups
            )
        result["memory_peak_mib"] = {n: round(v, 1) for n, v in sampler.peak.items()}
        result["config"] = f"{replicas} replicas × concurrency_per_replica {per}"
        print(
            "berth throughput:", {c: v["rps"] for c, v in result["throughput"].items()}, flush=True
        )
        with stack.client() as c:
            c.delete(f"/v1/endpoint/{name}")

        fourth = [burst(stack, f"bench-burst-{i}") for i in range(args.repeat)]
        last = [r[-1] for r in fourth if len(r) == 4]
        result["scale_up_4th_start_ms"] = spread(last, 1) if last else None
        if args.drain_jobs > 0:  # 0: skipped, for quick A/B runs
            result["queue_drain"] = queue_drain(stack, nats.url, args.drain_jobs, replicas)
            print("drain:", result["queue_drain"], flush=True)
    finally:
        stack.close()
        nats.stop()
    return result


def container_cold_start(runs: int) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp()) / "container.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.container_cold_start",
        "--runs",
        str(runs),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        return {"skipped": (done.stderr or done.stdout)[-500:]}
    return json.loads(out.read_text())  # type: ignore[no-any-return]


# -- report ---------------------------------------------------------------------------------


def _cell(s: dict[str, float], unit: str = "") -> str:
    return f"{s['median']:,g}{unit} [{s['min']:,g}–{s['max']:,g}]"


def markdown(result: dict[str, Any]) -> str:
    rows = ["| system | c | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    systems = [(k, v) for k, v in result["systems"].items() if "throughput" in v]
    for key, sys_ in systems:
        for c, r in sys_["throughput"].items():
            rows.append(
                f"| {key} | {c} | {_cell(r['rps'])} | {_cell(r['p50_ms'])} | "
                f"{_cell(r['p99_ms'])} | {r['errors']} |"
            )
    out = [
        f"Run {result['when']}, {result['repeat']} runs of {result['duration_s']} s each "
        "per cell; median [min–max].",
        "",
        *rows,
        "",
    ]
    tp = {k: v["throughput"]["64"]["rps"]["median"] for k, v in systems}
    if "berth" in tp and len(tp) > 1:
        ratios = [f"{k} {tp['berth'] / v:.2f}×" for k, v in tp.items() if k != "berth" and v]
        out += ["Berth's req/s at c=64 relative to: " + ", ".join(ratios), ""]
    for key, sys_ in result["systems"].items():
        if "skipped" in sys_:
            out += [f"{key}: skipped ({sys_['skipped']})", ""]
    b = result["systems"].get("berth", {})
    if b:
        o = b["overhead_c1"]["added_ms"]
        out += [
            "| Berth | figure |",
            "|---|---|",
            f"| added latency, c=1, p50 | {_cell(o['p50'], ' ms')} |",
            f"| added latency, c=1, p99 | {_cell(o['p99'], ' ms')} |",
        ]
        cpu = b["throughput"]["64"]["cpu_us_per_request"]
        out.append(f"| CPU per request at c=64, Berth's processes | {_cell(cpu['berth'], ' µs')} |")
        out.append(f"| CPU per request at c=64, replicas | {_cell(cpu['replicas'], ' µs')} |")
        for n in ("api", "agent", "scaler", "nats-server"):
            out.append(f"| … of which {n} | {_cell(cpu[n], ' µs')} |")
        cs = b["cold_start_process"]["ms"]
        out.append(f"| cold start, process runtime | {_cell(cs, ' ms')} |")
        if "container" in result:
            cc = result["container"]
            if "first_request_ms" in cc:
                cell = _cell(cc["first_request_ms"], " ms")
                out.append(f"| cold start, container runtime | {cell} |")
        if b.get("scale_up_4th_start_ms"):
            out.append(
                f"| burst at zero, max 4: 4th start issued after | {_cell(b['scale_up_4th_start_ms'], ' ms')} |"
            )
        d = b.get("queue_drain")
        if d is not None:
            out.append(
                f"| queue drain, {d['jobs']:,} async jobs, {d['replicas']} | {d['jobs_per_s']:,g} jobs/s ({d['drain_s']} s) |"
            )
            out.append(
                f"| async submissions while no replica may run, 32 connections | {d['submitted_per_s']:,g} jobs/s |"
            )
        for n, mib in b["memory_idle_mib"].items():
            out.append(
                f"| memory, {n}: idle → peak at c=64 | {mib} → {b['memory_peak_mib'][n]} MiB |"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--requests", type=int, default=1000, help="per overhead round")
    p.add_argument("--cold-runs", type=int, default=5)
    p.add_argument("--drain-jobs", type=int, default=10_000, help="0 skips the queue drain")
    p.add_argument("--berth-replicas", type=int, default=2)
    p.add_argument("--berth-concurrency", type=int, default=8)
    p.add_argument(
        "--systems",
        default="uvicorn,berth,ray",
        help="comma-separated subset of uvicorn, berth, ray (for quick A/B runs)",
    )
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--ray-venv", type=Path, default=Path.home() / ".cache" / "berth-bench" / "ray")
    p.add_argument("--container", action="store_true", help="also the container cold start")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    chosen = {s.strip() for s in args.systems.split(",") if s.strip()}
    if not chosen or chosen - {"uvicorn", "berth", "ray"}:
        p.error(f"--systems takes a subset of uvicorn, berth, ray; got {args.systems!r}")
    if shutil.which("wrk") is None:
        sys.exit("the harness drives load with wrk: apt-get install wrk")

    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": args.duration,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "systems": {},
    }
    systems = result["systems"]
    if "uvicorn" in chosen:
        systems["uvicorn"] = bench_uvicorn(args.duration, args.repeat)
        print(
            "uvicorn:",
            {c: v["rps"] for c, v in systems["uvicorn"]["throughput"].items()},
            flush=True,
        )
    if "berth" in chosen:
        with tempfile.TemporaryDirectory(prefix="berth-harness-") as tmp:
            systems["berth"] = bench_berth(args, Path(tmp))
    if "ray" in chosen and args.skip_ray:
        systems["ray-default"] = {"skipped": "--skip-ray"}
    elif "ray" in chosen:
        python, why = ray_python(args.ray_venv)
        for key, ongoing in (("ray-default", None), ("ray-tuned", 64)):
            if python is None:
                systems[key] = {"skipped": why}
                continue
            systems[key] = bench_ray(python, args.duration, args.repeat, ongoing)
            print(key, {c: v["rps"] for c, v in systems[key]["throughput"].items()}, flush=True)
    if args.container:
        result["container"] = container_cold_start(args.cold_runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "harness.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "harness.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
