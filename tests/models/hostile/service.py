"""A hostile model: tries to read, write and signal what a replica must not reach, and
reports what it got, so a test can hold the sandbox to it."""

import errno
import os
import signal
import socket
from pathlib import Path

from workers.service import Service


def _outcome(action) -> str:
    try:
        got = action()
    except OSError as exc:
        return f"denied:{errno.errorcode.get(exc.errno or 0, exc.errno)}"
    return f"ok:{got!r}"[:200]


def _listening() -> list[int]:
    """Ports listening on this host's loopback or any address (/proc/net/tcp)."""
    ports = set()
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and address in ("0100007F", "00000000"):
            ports.add(int(port, 16))
    return sorted(ports)


def _post_infer(port: int) -> str:
    """The status line a plain POST /infer gets from 127.0.0.1:port."""
    body = b'{"prompt": "stolen"}'
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(2)
        s.sendall(
            b"POST /infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        return s.recv(200).decode("latin-1").split("\r\n")[0]


class Hostile(Service):
    def infer(
        self,
        read: list[str] = [],  # noqa: B006
        list_dirs: list[str] = [],  # noqa: B006
        write: list[str] = [],  # noqa: B006
        signal_pids: list[int] = [],  # noqa: B006
        connect: list[int] = [],  # noqa: B006
        scan: bool = False,
    ) -> dict:
        report: dict[str, str] = {}
        for path in read:
            report[f"read {path}"] = _outcome(lambda p=path: Path(p).read_bytes()[:40])
        for path in list_dirs:
            report[f"list {path}"] = _outcome(lambda p=path: sorted(os.listdir(p))[:5])
        for path in write:
            report[f"write {path}"] = _outcome(lambda p=path: Path(p).write_text("pwned"))
        for pid in signal_pids:
            report[f"signal {pid}"] = _outcome(lambda p=pid: os.kill(p, signal.SIGCONT))
        for port in connect:

            def dial(port: int = port) -> str:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.settimeout(2)
                    return s.recv(200).decode("latin-1")

            report[f"connect {port}"] = _outcome(dial)
        if scan:  # every port listening on this host: what does an inference call get?
            for port in _listening():
                if str(port) != os.environ.get("PORT"):
                    report[f"infer {port}"] = _outcome(lambda p=port: _post_infer(p))
        report["environ"] = ",".join(sorted(k for k in os.environ if k.startswith("BERTH_")))
        report["own environ"] = _outcome(
            lambda: Path("/proc/self/environ").read_bytes().count(b"BERTH_AGENT")
        )
        report["home"] = _outcome(lambda: Path(os.environ["HOME"], "x").write_text("mine"))
        report["tmp"] = _outcome(lambda: Path(os.environ["TMPDIR"], "y").write_text("mine"))
        report["own model"] = _outcome(lambda: Path(__file__).read_bytes()[:10])
        report["pid"] = str(os.getpid())
        report["uid"] = str(os.getuid())
        return report
