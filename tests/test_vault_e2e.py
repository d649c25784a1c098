"""The API on Vault, end to end: secrets stored in Vault through AppRole with the policy
in deploy/, injected into a replica, and a Vault that cannot be reached answered clearly.

Runs against BERTH_TEST_VAULT_ADDR/_TOKEN when set, else an OpenBao dev server.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.conftest import FAST, ROOT, NatsServer, Stack, free_port
from tests.openbao import OpenBao

pytestmark = pytest.mark.e2e

POLICY = (ROOT / "deploy" / "vault" / "berth-policy.hcl").read_text()


def test_api_keeps_secrets_in_vault_and_replicas_get_them(
    vault_server: tuple[str, str], own_nats: NatsServer, tmp_path: Path
) -> None:
    addr, root = vault_server
    vault = OpenBao.at(addr, root)
    role_id, secret_id = vault.approle("berth", POLICY)
    # As deploy/compose.yaml does it: the AppRole's ids in files an init job wrote.
    (tmp_path / "role_id").write_text(role_id + "\n")
    (tmp_path / "secret_id").write_text(secret_id + "\n")
    stack = Stack(
        tmp_path / "berth",
        own_nats.url,
        env={
            **FAST,
            "BERTH_VAULT_ADDR": addr,
            "BERTH_VAULT_ROLE_ID_FILE": str(tmp_path / "role_id"),
            "BERTH_VAULT_SECRET_ID_FILE": str(tmp_path / "secret_id"),
        },
    )
    key = "VAULT_" + secrets.token_hex(3).upper()
    value = "in-vault-" + secrets.token_hex(8)
    try:
        stack.start()
        with stack.client() as c:
            assert c.post("/v1/secret", json={"key": key, "value": value}).status_code == 201
            cred = {"key": "vault-reg", "username": "bot", "password": "pw"}
            assert c.post("/v1/registry-credential", json=cred).status_code == 201
            assert key in c.get("/v1/secrets").json()
            assert c.get("/v1/registry-credential/vault-reg").json()["username"] == "bot"
            stack.deploy("vault-probe", container_secrets=[key], registry_credential="vault-reg")
            got = c.post("/e/vault-probe/env", json={"name": key})
            assert got.status_code == 200, got.text
            assert got.json()["output"]["value"] == value
            # It lives in Vault, under the policy's paths, and not in Berth's database.
            stored = vault.api("GET", f"secret/data/berth/secret/{key}").json()
            assert stored["data"]["data"] == {"value": value}
            assert all(value.encode() not in f.read_bytes() for f in stack.data_dir.glob("*.db*"))
            c.delete("/v1/endpoint/vault-probe")
            assert c.delete(f"/v1/secret/{key}").status_code == 200
            assert c.delete("/v1/registry-credential/vault-reg").status_code == 200
    finally:
        stack.close()


def test_unreachable_vault_is_a_clear_503(own_nats: NatsServer, tmp_path: Path) -> None:
    stack = Stack(
        tmp_path / "berth",
        own_nats.url,
        env={
            **FAST,
            "BERTH_VAULT_ADDR": f"http://127.0.0.1:{free_port()}",
            "BERTH_VAULT_TOKEN": "t",
            "BERTH_VAULT_TIMEOUT": "0.5",
        },
    )
    try:
        stack.start("api")
        with stack.client() as c:
            for resp in (
                c.post("/v1/secret", json={"key": "K", "value": "v"}),
                c.get("/v1/secrets"),
                c.get("/v1/registry-credentials"),
            ):
                assert resp.status_code == 503, resp.text
                error = resp.json()["error"]
                assert error["code"] == "secret_store_unavailable"
                assert "unreachable" in error["message"]
    finally:
        stack.close()
