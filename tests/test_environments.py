"""A model's requirements, installed once per agent (workers/environments.py), with a
stand-in for uv that records its calls: sharing, progress and failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from workers import environments
from workers.environments import Environments, InstallFailed

FAKE_UV = """#!/bin/sh
# A stand-in for uv: notes its arguments, takes a while, puts a module in --target.
echo "$@" >> "{calls}"
sleep 0.5
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target="$2"; shift ;;
    -r) wanted="$2"; shift ;;
  esac
  shift
done
if grep -q nosuchthing "$wanted"; then echo "No solution found: nosuchthing"; exit 1; fi
mkdir -p "$target" && echo "VALUE = 42" > "$target/fakemod.py"
echo "Installed 1 package"
"""


@pytest.fixture
def fake_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    calls = tmp_path / "calls.log"
    script = tmp_path / "uv"
    script.write_text(FAKE_UV.format(calls=calls))
    script.chmod(0o755)
    monkeypatch.setattr(environments, "_uv", lambda: str(script))
    monkeypatch.setattr(environments, "PROGRESS_EVERY", 0.2)
    return calls


def model(tmp_path: Path, name: str, requirements: str, nodeps: str | None = None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "requirements.txt").write_text(requirements)
    if nodeps is not None:
        (folder / "requirements-nodeps.txt").write_text(nodeps)
    return folder


async def test_one_install_serves_every_start_that_needs_it(fake_uv: Path, tmp_path: Path) -> None:
    envs = Environments(tmp_path / "envs")
    events: list[tuple[str, dict[str, Any]]] = []

    async def report(kind: str, details: dict[str, Any]) -> None:
        events.append((kind, details))

    a = model(tmp_path, "a", "fakemod==1\n", nodeps="weights==1\n")
    b = model(tmp_path, "b", "fakemod==1\n", nodeps="weights==1\n")  # the same needs
    sites = await asyncio.gather(envs.ensure(a, report), envs.ensure(b, report))
    assert sites[0] == sites[1] and sites[0] is not None
    assert (sites[0] / "fakemod.py").read_text() == "VALUE = 42\n"
    calls = fake_uv.read_text().splitlines()
    assert len(calls) == 2  # requirements.txt, then the no-deps file: one install for both
    assert "--no-deps" not in calls[0] and "--no-deps" in calls[1]
    kinds = [k for k, _ in events]
    assert kinds[0] == "environment_install_started" and kinds[-1] == "environment_installed"
    assert "environment_installing" in kinds  # progress while uv ran
    # Installed: the next start does not wait for uv at all.
    assert await envs.ensure(a, report) == sites[0]
    assert len(fake_uv.read_text().splitlines()) == 2


async def test_a_failed_install_says_why_and_leaves_nothing(fake_uv: Path, tmp_path: Path) -> None:
    envs = Environments(tmp_path / "envs")
    events: list[str] = []

    async def report(kind: str, details: dict[str, Any]) -> None:
        events.append(kind)

    bad = model(tmp_path, "bad", "nosuchthing==9\n")
    with pytest.raises(InstallFailed, match="No solution found: nosuchthing"):
        await envs.ensure(bad, report)
    assert events[-1] == "environment_install_failed"
    assert [p.name for p in (tmp_path / "envs").iterdir()] == []  # no half-made folder
    plain = tmp_path / "plain"
    plain.mkdir()
    assert await envs.ensure(plain) is None  # no requirements: nothing to install


def test_uv_settings_that_change_a_resolution_make_another_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator who points the agents' uv at local wheels or pins a package gets new
    environments, not ones resolved before (UV_FIND_LINKS, UV_CONSTRAINT and its file)."""
    for name in environments._RESOLVING:
        monkeypatch.delenv(name, raising=False)
    wanted = b"torch>=2.3\n"
    plain = Environments.key(wanted)
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "cache"))  # where, not what
    assert Environments.key(wanted) == plain
    monkeypatch.setenv("UV_FIND_LINKS", str(tmp_path / "wheels"))
    linked = Environments.key(wanted)
    assert linked != plain
    pins = tmp_path / "constraints.txt"
    pins.write_text("torch==2.13.0+cpu\n")
    monkeypatch.setenv("UV_CONSTRAINT", str(pins))
    pinned = Environments.key(wanted)
    assert pinned not in (plain, linked)
    pins.write_text("torch==2.14.1\n")  # the same file, another pin
    assert Environments.key(wanted) not in (plain, linked, pinned)
