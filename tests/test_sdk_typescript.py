"""The TypeScript SDK (sdk/typescript), built with the TypeScript compiler from npm and
tested with Node's own test runner against a real Berth that this test starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MODELS, ROOT, Stack
from tests.test_examples import need

pytestmark = pytest.mark.e2e

SDK = ROOT / "sdk" / "typescript"


def build() -> None:
    """npm's dev dependencies from the lockfile (once), then tsc."""
    need("node", "nodejs")
    need("npm", "npm")
    if not (SDK / "node_modules" / ".bin" / "tsc").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=SDK, check=True, timeout=300)
    subprocess.run(["npm", "run", "--silent", "build"], cwd=SDK, check=True, timeout=300)


def test_the_typescript_sdk_against_a_running_berth(stack: Stack, name: str) -> None:
    build()
    assert (SDK / "dist" / "index.d.ts").exists()  # type declarations ship with it
    probe = f"{name}-p"
    stack.deploy(probe, "probe", min_replicas=1, max_replicas=1)
    stack.wait_ready(probe)
    env = {
        **os.environ,
        "BERTH_URL": stack.url,
        "BERTH_TOKEN": stack.token,
        "BERTH_PROBE": probe,
        "BERTH_FOLDER": str(Path(MODELS / "probe")),
        "BERTH_NEW": f"{name}-n",
    }
    run = subprocess.run(
        ["node", "--test", "--test-reporter=spec", "test/"],
        cwd=SDK,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "# fail 0" in run.stdout or "✖" not in run.stdout, run.stdout[-3000:]
