"""``berth up`` and the CLI, as a user runs them: one command, Ctrl-C, run again."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from berth.local import LocalNats, go_threads
from tests.conftest import FAST, ROOT, free_port, wait_for

pytestmark = pytest.mark.e2e


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Up:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.nats_port = free_port()
        self.env = (
            {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
            | FAST
            | {
                "BERTH_DATA_DIR": str(data_dir),
                "BERTH_PORT": str(self.port),
                "BERTH_NATS_PORT": str(self.nats_port),
            }
        )
        self.log = data_dir / f"up-{free_port()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "berth.cli", "up"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"berth up exited:\n{self.log.read_text()}")
            return "Berth is up" in self.log.read_text()

        wait_for(ready, 90, "berth up to print its banner")

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        # No BERTH_URL / BERTH_TOKEN: the CLI finds both in the data directory.
        env = {k: v for k, v in self.env.items() if k not in ("BERTH_URL", "BERTH_TOKEN")}
        return subprocess.run(
            [sys.executable, "-m", "berth.cli", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            input=stdin if stdin is not None else "",
        )

    def interrupt(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)


def test_berth_up_deploy_call_stop_and_restart(tmp_path: Path) -> None:
    up = Up(tmp_path / "data")
    up.start()
    try:
        banner = up.log.read_text()
        token = (up.data_dir / "admin-token").read_text().strip()
        assert token in banner and f"http://127.0.0.1:{up.port}" in banner
        assert token.startswith("berth_")  # a bootstrap token in the database, not a static one
        for made in ("admin-token", "agent-token", "secret.key"):
            assert stat.S_IMODE((up.data_dir / made).stat().st_mode) == 0o600

        # Secrets through the CLI (the value on stdin), into a model that reads one.
        stored = up.cli("secrets", "set", "GREETING", stdin="Ahoy\n")
        assert stored.returncode == 0 and "created" in stored.stdout, stored.stderr
        assert up.cli("secrets", "list").stdout.split() == ["GREETING"]
        greeter = up.cli("deploy", str(ROOT / "examples" / "greeter"), "--secret", "GREETING")
        assert greeter.returncode == 0, greeter.stderr
        greeted = up.cli("infer", "greeter", '{"name": "Ada"}')
        assert json.loads(greeted.stdout)["output"]["text"] == "Ahoy, Ada!", greeted.stderr
        assert "Ahoy" not in up.log.read_text()
        made = up.cli("tokens", "create", "ci", "--scope", "inference", "--endpoint", "greeter")
        assert made.returncode == 0 and made.stdout.startswith("berth_"), made.stderr
        assert "ci" in up.cli("tokens", "list").stdout

        deployed = up.cli(
            "deploy",
            str(ROOT / "examples" / "echo"),
            "--name",
            "echo",
            "--min-replicas",
            "0",
            "--max-replicas",
            "2",
            "--scale-to-zero",
            "30",
        )
        assert deployed.returncode == 0, deployed.stderr
        assert "endpoint echo created" in deployed.stdout
        called = up.cli("infer", "echo", '{"prompt": "hi", "n": 2}')
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout)["output"]["text"] == "hihi"
        listed = up.cli("endpoints")
        assert "echo" in listed.stdout and "1 running" in listed.stdout
    finally:
        code = up.interrupt()
    assert code == 0, up.log.read_text()
    assert not port_open(up.port) and not port_open(up.nats_port)
    assert "berth: stopped" in up.log.read_text()

    # Run it again: the endpoint and its model are still there; the token is not shown again.
    up.start()
    try:
        assert token not in up.log.read_text() and "admin token: in " in up.log.read_text()
        listed = up.cli("endpoints", "echo")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["max_replicas"] == 2
        called = up.cli("infer", "echo", '{"prompt": "again"}')
        assert called.returncode == 0, called.stderr + up.log.read_text()
        assert json.loads(called.stdout)["output"]["text"] == "again"
        missing = up.cli("infer", "nope", "{}")
        assert missing.returncode == 1 and "404" in missing.stderr
    finally:
        assert up.interrupt() == 0


def test_the_embedded_nats_server_gets_a_quarter_of_the_cpus(nats_server: LocalNats) -> None:
    assert nats_server.proc is not None
    environ = (Path(f"/proc/{nats_server.proc.pid}/environ")).read_bytes().split(b"\0")
    cpus = len(os.sched_getaffinity(0))
    assert f"GOMAXPROCS={max(1, cpus // 4)}".encode() in environ


def test_an_operators_gomaxprocs_is_kept() -> None:
    assert go_threads({"GOMAXPROCS": "6", "PATH": "/bin"}, 2)["GOMAXPROCS"] == "6"
    assert go_threads({"PATH": "/bin"}, 2) == {"PATH": "/bin", "GOMAXPROCS": "1"}
    assert go_threads({}, 32)["GOMAXPROCS"] == "8"


def _children(pid: int) -> dict[str, int]:
    """`berth up`'s children by their subcommand (api, scaler, agent)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"berth.cli" in argv:
            found[argv[argv.index(b"berth.cli") + 1].decode()] = int(entry.name)
    return found


def test_berth_up_restarts_a_crashed_child_and_keeps_serving(tmp_path: Path) -> None:
    up = Up(tmp_path / "data")
    up.start()
    try:
        assert up.proc is not None
        deployed = up.cli("deploy", str(ROOT / "examples" / "echo"), "--name", "echo")
        assert deployed.returncode == 0, deployed.stderr
        assert up.cli("infer", "echo", '{"prompt": "a"}').returncode == 0
        for victim in ("agent", "api", "scaler"):
            before = wait_for(lambda v=victim: _children(up.proc.pid).get(v), 30, victim)
            os.kill(before, signal.SIGKILL)
            wait_for(
                lambda v=victim, b=before: _children(up.proc.pid).get(v) not in (None, b),
                30,
                f"{victim} to be started again",
            )
            if victim == "api":  # a caller may retry once the new API listens
                wait_for(lambda: port_open(up.port), 60, "the API to listen again")
            called = up.cli("infer", "echo", '{"prompt": "again"}')
            assert called.returncode == 0, called.stderr + up.log.read_text()[-3000:]
            assert json.loads(called.stdout)["output"]["text"] == "again"
        log = up.log.read_text()
        assert "agent exited with code -9; starting it again" in log
        assert up.proc.poll() is None  # berth up itself never stopped
        # The embedded nats-server lets in only clients with its token.
        assert stat.S_IMODE((up.data_dir / "nats-token").stat().st_mode) == 0o600
        with socket.create_connection(("127.0.0.1", up.nats_port), timeout=5) as s:
            s.recv(4096)  # INFO
            s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
            assert b"Authorization Violation" in s.recv(4096)
    finally:
        assert up.interrupt() == 0
    assert "berth: stopped" in up.log.read_text()
