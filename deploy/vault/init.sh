#!/bin/sh
# One-shot set-up of the compose file's Vault for Berth: initialise and unseal it
# (first run only), enable KV v2 at secret/, load Berth's policy, and give Berth an
# AppRole bound to that policy. The role id and secret id land in /vault-auth for
# the API. The unseal key and root token are written to /vault-init: fine for a
# trial; in production use auto-unseal and keep those with people, not on a volume.
set -eu
export VAULT_ADDR="${VAULT_ADDR:-http://vault:8200}"
until vault status -format=json >/dev/null 2>&1 || [ $? -eq 2 ]; do sleep 1; done

if [ ! -f /vault-init/init.json ]; then
  vault operator init -key-shares=1 -key-threshold=1 -format=json > /vault-init/init.json
  chmod 600 /vault-init/init.json
fi
unseal_key=$(sed -n 's/.*"unseal_keys_b64": *\[ *"\([^"]*\)".*/\1/p' /vault-init/init.json | head -1)
if [ -z "$unseal_key" ]; then
  unseal_key=$(tr -d '\n ' < /vault-init/init.json | sed -n 's/.*"unseal_keys_b64":\["\([^"]*\)".*/\1/p')
fi
vault operator unseal "$unseal_key" >/dev/null
VAULT_TOKEN=$(tr -d '\n ' < /vault-init/init.json | sed -n 's/.*"root_token":"\([^"]*\)".*/\1/p')
export VAULT_TOKEN

vault secrets list -format=json | grep -q '"secret/"' || vault secrets enable -path=secret kv-v2
vault policy write berth /berth-policy.hcl
vault auth list -format=json | grep -q '"approle/"' || vault auth enable approle
vault write auth/approle/role/berth token_policies=berth token_ttl=1h token_max_ttl=24h
vault read -field=role_id auth/approle/role/berth/role-id > /vault-auth/role_id
vault write -f -field=secret_id auth/approle/role/berth/secret-id > /vault-auth/secret_id
# Readable by the API's user only (uid 10001 in deploy/Dockerfile's image).
chown 10001:10001 /vault-auth/role_id /vault-auth/secret_id
chmod 400 /vault-auth/role_id /vault-auth/secret_id
echo "vault ready for berth"
