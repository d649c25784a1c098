"""Issue #7's harness, run small: every Berth figure it reports comes out, from a real
stack on 127.0.0.1 and wrk; the Markdown table renders with and without a queue drain.

Bounded: a second of load per cell, 50 requests per overhead round, 200 jobs
drained (about 25 s). wrk comes from Debian's package; CI installs it, so there
the test fails rather than skips without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import markdown
from tests.conftest import ROOT


def test_the_harness_reports_every_berth_figure(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is missing (CI installs Debian's wrk)")
        pytest.skip("wrk is not installed (apt-get install wrk)")
    args = ["--systems", "berth", "--duration", "1", "--repeat", "1", "--requests", "50"]
    args += ["--cold-runs", "1", "--drain-jobs", "200", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.harness", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    berth = json.loads((tmp_path / "harness.json").read_text())["systems"]["berth"]

    for c in ("1", "8", "64"):
        cell = berth["throughput"][c]
        assert cell["errors"] == 0 and cell["requests"] > 0 and cell["rps"]["median"] > 0
    cpu = berth["throughput"]["64"]["cpu_us_per_request"]
    for process in ("berth", "api", "agent", "scaler", "nats-server", "replicas"):
        assert cpu[process]["median"] >= 0
    assert cpu["api"]["median"] > 0 and cpu["agent"]["median"] > 0
    overhead = berth["overhead_c1"]
    assert overhead["berth_ms"]["p50"]["median"] > overhead["direct_ms"]["p50"]["median"] > 0
    assert 0 < berth["cold_start_process"]["ms"]["median"] < 10_000
    drain = berth["queue_drain"]
    assert drain["jobs"] == 200 and drain["queued_before"] == 200 and drain["jobs_per_s"] > 0
    for name in ("api", "agent", "scaler", "nats-server"):
        assert berth["memory_idle_mib"][name] > 0

    table = (tmp_path / "harness.md").read_text()
    assert "added latency, c=1, p50" in table and "queue drain, 200 async jobs" in table

    # --drain-jobs 0 leaves the drain out; the table renders without it.
    result = json.loads((tmp_path / "harness.json").read_text())
    del result["systems"]["berth"]["queue_drain"]
    assert "queue drain" not in markdown(result)
