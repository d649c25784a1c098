"""deploy/: the compose file hangs together, and the Vault policy grants what the code uses."""

from __future__ import annotations

import re

import yaml

from shared.stores.vault import kv_paths
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def test_policy_grants_exactly_the_paths_the_vault_store_uses() -> None:
    policy = (DEPLOY / "vault" / "berth-policy.hcl").read_text()
    granted = set(re.findall(r'path "([^"]+)"', policy))
    wanted = set()
    for path in kv_paths("berth").values():
        wanted |= {f"secret/data/{path}/*", f"secret/metadata/{path}/*", f"secret/metadata/{path}"}
    assert granted == wanted
    assert "sudo" not in policy and not any(p.startswith("sys/") for p in granted)


def test_compose_points_berth_at_vault_nats_and_postgres() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"nats", "postgres", "vault", "vault-init", "api", "scaler", "agent"} <= set(services)
    api = services["api"]["environment"]
    assert api["BERTH_VAULT_ADDR"] == "http://vault:8200"
    assert api["BERTH_VAULT_ROLE_ID_FILE"] and api["BERTH_VAULT_SECRET_ID_FILE"]
    assert api["BERTH_DATABASE_URL"].startswith("postgresql://")
    assert "BERTH_AGENT_TOKEN" in services["agent"]["environment"]
    for service in services.values():  # every file it mounts is in the repository
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    assert (DEPLOY / "Dockerfile").exists()
