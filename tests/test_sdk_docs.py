"""docs/sdk.md's examples, run exactly as written against a real Berth."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Stack
from tests.test_sdk_typescript import SDK, build

pytestmark = pytest.mark.e2e

DOC = ROOT / "docs" / "sdk.md"


def example(language: str) -> str:
    found = re.search(
        rf"<!-- example: {language} -->\n```\w+\n(.*?)```", DOC.read_text(), re.DOTALL
    )
    assert found, f"docs/sdk.md has no {language} example"
    return found.group(1)


def env(stack: Stack, name: str) -> dict[str, str]:
    return {**os.environ, "BERTH_URL": stack.url, "BERTH_TOKEN": stack.token, "ENDPOINT": name}


def test_the_python_example_runs(stack: Stack, name: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", example("python")],
        env=env(stack, name),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "'text': 'hi'" in lines[0]
    assert lines[1].startswith("completed") and "'text': 'laterlater'" in lines[1]


def test_the_typescript_example_runs(stack: Stack, name: str) -> None:
    build()
    script = SDK / "doc-example.mjs"  # beside the package: it imports itself by its name
    script.write_text(example("javascript"))
    try:
        run = subprocess.run(
            ["node", script.name],
            cwd=SDK,
            env=env(stack, name),
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        script.unlink()
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout  # console.log spreads an object over lines
    assert "text: 'hi'" in out and "text: 'laterlater'" in out, out
    assert out.index("text: 'hi'") < out.index("text: 'laterlater'")
