"""A real Docker engine for tests, with no image pulled from outside.

- ``dockerd`` (Debian's docker.io) on a socket of its own, with
  ``--iptables=false --ip6tables=false --bridge=none``: it leaves the host's
  network settings alone; containers use the host's network.
- A Python base image built offline: ``debootstrap --variant=minbase`` from the
  apt mirror this machine is configured with, then ``docker import``. The root
  file system is cached (``~/.cache/berth-tests``), so it is built once a machine.
- A private registry: Debian's ``docker-registry`` on 127.0.0.1 with htpasswd
  auth, holding the test image (tests/images/echo).

Where the engine cannot be had, the Docker tests skip and say why; with
``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tarfile
from pathlib import Path

import bcrypt
import docker
import httpx

from berth.local import ROOT, free_port, stop_process, wait_until
from shared.proc import die_with_parent

__all__ = ["DockerEnv", "missing_tools"]

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "berth-tests"
BASE = "berth-test/python:bookworm"
TOOLS = ("dockerd", "debootstrap", "docker-registry")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def _which(tool: str) -> str:
    return shutil.which(tool) or str(Path("/usr/sbin", tool))


def apt_mirror() -> str:
    """The Debian mirror apt is configured with (debootstrap needs one; nothing else is reachable)."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.sources")]:
        if path.exists():
            text = path.read_text()
            for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
                if "debian" in m.group(1) and "security" not in m.group(1):
                    return m.group(1)
    return "http://deb.debian.org/debian"


def base_rootfs(work: Path) -> Path:
    """A tarball of a minimal Debian with python3, made once and cached."""
    tarball = CACHE / "bookworm-python3.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = work / "rootfs"
    done = subprocess.run(
        [
            _which("debootstrap"),
            "--variant=minbase",
            "--include=python3,ca-certificates",
            "bookworm",
            str(rootfs),
            apt_mirror(),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"debootstrap failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    partial = tarball.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        tar.add(rootfs, arcname=".")
    partial.replace(tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


class DockerEnv:
    def __init__(self, work: Path):
        self.work = work
        # Unix socket paths are short: keep the engine's files in a short directory.
        self.sock = work / "d.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.registry_proc: subprocess.Popen[bytes] | None = None
        self.registry = ""
        self.username = "berth-test"
        self.password = secrets.token_urlsafe(12)
        self.client: docker.DockerClient | None = None

    @staticmethod
    def _popen(args: list[str], log: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # type: ignore[arg-type]
        )

    def start(self) -> DockerEnv:
        self.work.mkdir(parents=True, exist_ok=True)
        with (self.work / "dockerd.log").open("wb") as log:
            self.proc = self._popen(
                [
                    _which("dockerd"),
                    "--iptables=false",
                    "--ip6tables=false",
                    "--bridge=none",
                    "--data-root",
                    str(self.work / "root"),
                    "--exec-root",
                    str(self.work / "exec"),
                    "--pidfile",
                    str(self.work / "dockerd.pid"),
                    "--host",
                    self.url,
                ],
                log,
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited:\n{(self.work / 'dockerd.log').read_text()}")
            if not self.sock.exists():
                return False
            try:
                self.client = self.client or docker.DockerClient(base_url=self.url, timeout=120)
                return bool(self.client.ping())
            except docker.errors.DockerException:
                return False

        wait_until(up, 60, "dockerd to answer", interval=0.2)
        self._base_image()
        self._start_registry()
        return self

    def _base_image(self) -> None:
        assert self.client is not None
        tarball = base_rootfs(self.work)
        repo, tag = BASE.split(":")
        self.client.api.import_image(src=str(tarball), repository=repo, tag=tag)

    def build_echo(self, tag: str = "berth-test/echo:1") -> str:
        assert self.client is not None
        self.client.images.build(
            path=str(ROOT / "tests" / "images" / "echo"), tag=tag, buildargs={"BASE": BASE}
        )
        return tag

    def _start_registry(self) -> None:
        port = free_port()
        self.registry = f"127.0.0.1:{port}"
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=8)).decode()
        (self.work / "htpasswd").write_text(f"{self.username}:{hashed}\n")
        (self.work / "registry.yml").write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.work / 'registry'}\n"
            f"http:\n  addr: {self.registry}\n"
            f"auth:\n  htpasswd:\n    realm: berth-test\n    path: {self.work / 'htpasswd'}\n"
        )
        with (self.work / "registry.log").open("wb") as log:
            self.registry_proc = self._popen(
                [_which("docker-registry"), "serve", str(self.work / "registry.yml")], log
            )
        wait_until(
            lambda: httpx.get(f"http://{self.registry}/v2/", timeout=1).status_code == 401,
            30,
            "the registry to answer",
        )

    def push(self, local: str, name: str) -> str:
        """Push ``local`` to the private registry as ``name``, then drop the registry tag
        locally, so an agent must pull it (with credentials) to run it."""
        assert self.client is not None
        remote = f"{self.registry}/{name}"
        self.client.images.get(local).tag(remote)
        auth = {"username": self.username, "password": self.password}
        for line in self.client.api.push(remote, stream=True, decode=True, auth_config=auth):
            if "error" in line:
                raise RuntimeError(f"push {remote}: {line['error']}")
        self.client.images.remove(remote)
        return remote

    def stop(self) -> None:
        if self.client is not None:
            for c in self.client.containers.list(all=True):
                c.remove(force=True)
            self.client.close()
        if self.registry_proc is not None:
            stop_process(self.registry_proc, 10)
        if self.proc is not None:
            stop_process(self.proc, 30)
        self._unmount()

    def _unmount(self) -> None:
        """dockerd leaves mounts under its roots (netns, the data root itself): lift them."""
        with open("/proc/mounts") as fh:
            points = [line.split()[1] for line in fh if str(self.work) in line.split()[1]]
        for point in sorted(points, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
