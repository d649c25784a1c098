"""OctoAI's own published Python clients, unchanged, against a running Berth's asset
library: ``octoai`` 1.11 and ``octoai-sdk`` 0.10.1. Both are the import package
``octoai``, so each gets an environment of its own, installed once from a lockfile
with hashes (tests/clients/*.txt) under .artifacts/."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Stack

pytestmark = pytest.mark.e2e

CLIENTS = ROOT / "tests" / "clients"
ENVS = ROOT / ".artifacts" / "octoai-clients"


def client_env(lockfile: str) -> Path:
    """The Python of an environment with ``lockfile``'s packages (made once)."""
    target = ENVS / Path(lockfile).stem
    python = target / "bin" / "python"
    done = target / ".installed"
    source = (CLIENTS / lockfile).read_text()
    if done.exists() and done.read_text() == source:
        return python
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    shutil.rmtree(target, ignore_errors=True)
    try:
        subprocess.run(
            [uv, "venv", "-q", "--python", sys.executable, str(target)], check=True, timeout=120
        )
        subprocess.run(
            [uv, "pip", "install", "-q", "--require-hashes", "--python", str(python),
             "-r", str(CLIENTS / lockfile)],
            check=True, timeout=600,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"could not install {lockfile}: {exc}")
        pytest.skip(f"could not install {lockfile}: {exc}")
    done.write_text(source)
    return python


def run_client(
    stack: Stack, lockfile: str, script: str, tmp_path: Path, **extra: str
) -> dict[str, Any]:
    python = client_env(lockfile)
    tag = secrets.token_hex(3)
    env = {**os.environ, "OCTOAI_TOKEN": stack.token, "TAG": tag, **extra}
    run = subprocess.run(
        [str(python), str(CLIENTS / script), stack.url, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-9000:]
    out: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    out["tag"] = tag
    return out


def test_octoai_1x_runs_its_asset_calls_unchanged(stack: Stack, tmp_path: Path) -> None:
    # A file for create_from_url to name, served on 127.0.0.1 (the tests allow it).
    served = tmp_path / "served"
    served.mkdir()
    (served / "words.txt").write_text("fetched by Berth for octoai 1.x\n")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/words.txt"
        out = run_client(stack, "octoai-1.11.txt", "octoai_1x_assets.py", tmp_path, ASSET_URL=url)
    finally:
        server.shutdown()
        server.server_close()
    tag = out["tag"]
    assert out["from_url"]["status"] == "ready"
    assert out["from_url"]["size"] == len("fetched by Berth for octoai 1.x\n")
    assert out["made"]["status"] == "ready" and out["made"]["size"] > 8
    assert out["listed"] == [f"lora-{tag}", f"notes-{tag}"] and out["total"] == 2
    assert out["by_name"] == out["by_owner"] == out["made"]["id"]
    assert out["after"] == "deleted"
    with stack.client() as c:  # Berth agrees with what the client saw
        asset = c.get(f"/v1/assets/{out['made']['id']}").json()["asset"]
        assert asset["data"]["trigger_words"] == ["berthy"] and asset["asset_type"] == "lora"


def test_octoai_sdk_0_10_runs_its_asset_calls_unchanged(stack: Stack, tmp_path: Path) -> None:
    out = run_client(stack, "octoai-sdk-0.10.txt", "octoai_sdk_010_assets.py", tmp_path)
    tag = out["tag"]
    assert out["made"]["status"] == "ready" and out["made"]["size"] > 8
    assert out["plain"] == "ready"
    assert out["listed"] == [f"notes010-{tag}"]
    assert out["got"] == out["made"]["id"]
    assert out["after"] == "deleted"


def test_octoai_1x_runs_a_tune_unchanged(stack: Stack, tmp_path: Path) -> None:
    out = run_client(stack, "octoai-1.11.txt", "octoai_1x_tunes.py", tmp_path)
    tag = out["tag"]
    assert out["status"] == "succeeded", out
    assert out["tune_type"] == "lora_tune" and len(out["outputs"]) == 1
    assert out["lora"] == "lora"
    assert out["cancelled"] == "cancelled"
    assert out["listed"] == [f"other-{tag}", f"tune-{tag}"]
    assert out["after_delete"] == [f"tune-{tag}"]
