# The least privilege Berth's API needs in Vault: the KV v2 engine mounted at
# `secret/`, under the path prefix `berth/` (BERTH_VAULT_MOUNT, BERTH_VAULT_PREFIX).
# Change both paths together if you change either setting.
#
#   vault policy write berth deploy/vault/berth-policy.hcl
#
# Nothing else: no other path, no sys/ access, no token creation. Agents need no
# Vault access at all; they get their replicas' values from the API, sealed.

# Read and write secret, registry-credential and webhook signing-secret values
# (create uses check-and-set).
path "secret/data/berth/secret/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/berth/registry/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/berth/webhook/*" {
  capabilities = ["create", "read", "update"]
}

# Timestamps, existence checks, listing keys and deleting every version.
path "secret/metadata/berth/secret/*" {
  capabilities = ["read", "list", "delete"]
}
path "secret/metadata/berth/registry/*" {
  capabilities = ["read", "list", "delete"]
}
path "secret/metadata/berth/webhook/*" {
  capabilities = ["read", "list", "delete"]
}
path "secret/metadata/berth/secret" {
  capabilities = ["list"]
}
path "secret/metadata/berth/registry" {
  capabilities = ["list"]
}
path "secret/metadata/berth/webhook" {
  capabilities = ["list"]
}
