"""Process replicas are sandboxed by the kernel (workers/sandbox.py): a hostile model
tries each read, write and signal a replica must not make, and reports what it got."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST, NatsServer, Stack
from workers.sandbox import Policy, apply, landlock_abi, read_paths_for

needs_landlock = pytest.mark.skipif(landlock_abi() == 0, reason="this kernel has no Landlock")


def _in_child(policy: Policy, as_uid: int | None, probe: list[Path]) -> dict[str, str]:
    """Fork; in the child become ``as_uid`` (an unprivileged agent), apply ``policy`` and
    try to read each path; the outcomes come back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.close(r)
        lines = []
        try:
            if as_uid is not None:
                os.setgroups([])
                os.setresgid(as_uid, as_uid, as_uid)
                os.setresuid(as_uid, as_uid, as_uid)
            apply(policy)
            for path in probe:
                try:
                    path.read_bytes()
                    lines.append(f"{path}\tok")
                except OSError as exc:
                    lines.append(f"{path}\t{exc.errno}")
        except BaseException as exc:
            lines.append(f"error\t{exc!r}")
        os.write(w, "\n".join(lines).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    return dict(line.split("\t", 1) for line in out.splitlines())


@needs_landlock
def test_landlock_alone_confines_an_unprivileged_process() -> None:
    """The `make up` case: an agent with no privileges. Its own files (here, files it
    may read by their permissions) are closed to a replica by Landlock alone."""
    tmp_path = Path(tempfile.mkdtemp(prefix="berth-landlock-"))  # pytest's is root-only
    allowed, secret = tmp_path / "model", tmp_path / "data"
    for folder in (allowed, secret):
        folder.mkdir()
        (folder / "f").write_text("x")
        folder.chmod(0o755)
        (folder / "f").chmod(0o644)
    tmp_path.chmod(0o755)
    read, list_only = read_paths_for(Path(__file__).resolve().parents[1])
    policy = Policy(read=(*read, str(allowed)), write=(), list_only=list_only)
    got = _in_child(policy, 65534, [allowed / "f", secret / "f", Path("/proc/1/environ")])
    assert got[str(allowed / "f")] == "ok", got
    assert got[str(secret / "f")] == str(13), got  # EACCES
    assert got["/proc/1/environ"] != "ok", got
    # Without the sandbox the same process reads it: the test can tell.
    got = _in_child(Policy(read=(), write=(), landlock=False), 65534, [secret / "f"])
    assert got[str(secret / "f")] == "ok", got
    shutil.rmtree(tmp_path)


@needs_landlock
@pytest.mark.e2e
def test_a_hostile_model_reaches_nothing_of_the_host(
    own_nats: NatsServer, tmp_path: Path, name: str
) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env=FAST)
    other = name[:-5] + "-oth"
    try:
        stack.start()
        with stack.client() as c:
            assert (
                c.post("/v1/secret", json={"key": "OTHER_KEY", "value": "s3cret-v"}).status_code
                == 201
            )
        stack.deploy(
            other, "probe", min_replicas=1, max_replicas=1, container_secrets=["OTHER_KEY"]
        )
        stack.deploy(name, "hostile", max_replicas=1)
        with stack.client() as c:
            victim = c.post(f"/e/{other}/infer", json={"prompt": "p"}).json()["output"]
            data = stack.data_dir
            agent_dir = next(data.glob("agent-*"))
            other_model = next((agent_dir / "models").glob("*/service.py"))
            other_key = next((agent_dir / "replica-keys").glob("*"))
            assert other_key.stat().st_mode & 0o777 == 0o600
            agent_pid = stack.procs["agent"].pid
            api_pid = stack.procs["api"].pid
            ask: dict[str, Any] = {
                "read": [
                    str(data / "berth.db"),
                    str(data / "secret.key"),
                    str(data / "api.log"),
                    str(other_model),
                    str(other_key),
                    f"/proc/{agent_pid}/environ",
                    f"/proc/{api_pid}/environ",
                    f"/proc/{victim['pid']}/environ",
                    "/etc/hostname",
                ],
                "list_dirs": [str(data), str(agent_dir / "models")],
                "write": [str(data / "pwned"), str(agent_dir / "pwned"), "/tmp/berth-pwned"],
                "signal_pids": [agent_pid, api_pid, int(victim["pid"])],
                "scan": True,
            }
            resp = c.post(f"/e/{name}/infer", json=ask)
            assert resp.status_code == 200, resp.text
            report: dict[str, str] = resp.json()["output"]
        for key, outcome in report.items():
            if (
                key.startswith(("read /", "list /", "write /", "signal "))
                and key != "read /etc/hostname"
            ):
                assert outcome.startswith("denied:"), (key, outcome)
        assert report["read /etc/hostname"].startswith("ok:"), report  # the system stays readable
        # Found by its listening port, another endpoint's replica answers only its agent.
        assert report[f"infer {victim['port']}"] == "ok:'HTTP/1.1 403 Forbidden'", report
        # No BERTH_* setting reaches a model but the address it should listen on.
        assert report["environ"] == "BERTH_REPLICA_HOST"
        assert report["own environ"] == "ok:0"  # nor in what the process was started with
        for own in ("home", "tmp", "own model"):
            assert report[own].startswith("ok:"), (own, report)
        assert not (data / "pwned").exists() and not Path("/tmp/berth-pwned").exists()
        for pid in (agent_pid, api_pid, int(victim["pid"])):
            os.kill(pid, 0)  # all still alive
        if os.geteuid() == 0:
            status = Path(f"/proc/{report['pid']}/status").read_text()
            cap_eff = next(ln for ln in status.splitlines() if ln.startswith("CapEff"))
            assert cap_eff.split()[1] == "0" * 16, cap_eff  # no root powers
    finally:
        stack.close()
        Path("/tmp/berth-pwned").unlink(missing_ok=True)
        signal.signal(signal.SIGCONT, signal.SIG_DFL)
