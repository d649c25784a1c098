"""Test hosts of our own: network namespaces joined to this machine by veth pairs.

Each host gets a namespace with its loopback up and one veth link to the root
namespace, in a /30 of 10.231.0.0/16 that only these tests use; its default
route points back through that link, so the host reaches any address of the
root namespace (the test's nats-server listens on the first host's link).
Needs root and iproute2; everything is removed afterwards.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess

__all__ = ["NetHost", "netns_unavailable"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"berth-probe-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = (
            exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        )
        return f"cannot create a network namespace: {detail}"
    _ip("netns", "del", probe)
    return None


class NetHost:
    """One test host: ``exec`` is the command prefix that runs a process inside it."""

    def __init__(self, subnet: int, index: int):
        tag = secrets.token_hex(2)
        self.ns = f"berth-{tag}-{index}"
        self.outer, self.inner = f"bv{tag}{index}o", f"bv{tag}{index}i"
        self.gateway = f"10.231.{subnet}.{4 * index + 1}"
        self.address = f"10.231.{subnet}.{4 * index + 2}"
        self.exec = ["ip", "netns", "exec", self.ns]

    def create(self) -> NetHost:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _ip("link", "set", self.inner, "netns", self.ns)
        _ip("addr", "add", f"{self.gateway}/30", "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        inside = ["netns", "exec", self.ns, "ip"]
        _ip(*inside, "addr", "add", f"{self.address}/30", "dev", self.inner)
        _ip(*inside, "link", "set", self.inner, "up")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "route", "add", "default", "via", self.gateway)
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=10)
