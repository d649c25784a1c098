"""A real load balancer in front of several API instances: Debian's HAProxy.

Round robin over the instances, each checked on ``/healthz`` twice a second and taken
out after two failures. A request is sent again to another instance only when its
connection was refused or could not be made (nothing reached the first instance), never
after the request went out: a sync inference is not idempotent. Keep-alive to the
instances is off for the same reason (an instance that stops closes its idle connections,
and a request written into one at that moment would be lost or run twice). Every answer
says which instance served it (``X-Berth-Served-By``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from berth.local import free_port, wait_until
from shared.proc import die_with_parent

__all__ = ["HAProxy", "haproxy_config"]


def haproxy_config(port: int, backends: dict[str, str]) -> str:
    """The configuration: ``backends`` maps a name to an instance's ``http://host:port``."""
    servers = "\n".join(
        f"  server {name} {url.removeprefix('http://')} check" for name, url in backends.items()
    )
    return f"""\
global
  maxconn 2048
  log stdout format raw local0

defaults
  mode http
  log global
  option httplog
  timeout connect 2s
  timeout client 180s
  timeout server 180s
  retries 3
  option redispatch 1
  retry-on conn-failure
  option http-server-close

frontend berth
  bind 127.0.0.1:{port}
  default_backend apis

backend apis
  balance roundrobin
  option httpchk GET /healthz
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1
  http-response set-header X-Berth-Served-By %s
{servers}
"""


class HAProxy:
    def __init__(self, work: Path, backends: dict[str, str]):
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backends = backends
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def missing() -> str | None:
        return None if shutil.which("haproxy") else "no haproxy (apt-get install haproxy)"

    def start(self) -> HAProxy:
        self.work.mkdir(parents=True, exist_ok=True)
        config = self.work / "haproxy.cfg"
        config.write_text(haproxy_config(self.port, self.backends))
        subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], check=True, timeout=10)
        with (self.work / "haproxy.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        wait_until(self._listening, 10, f"haproxy on port {self.port}")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError((self.work / "haproxy.log").read_text())
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
