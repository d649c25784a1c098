"""``berth tokens``, ``berth secrets`` and ``berth registry-credentials``.

Values are read from standard input or a prompt, never from the command line
(where ``ps`` and shell history would keep them).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]


def _read_value(args: argparse.Namespace, what: str) -> str:
    if args.from_file:
        return Path(args.from_file).read_text().rstrip("\n")
    if not sys.stdin.isatty():
        return sys.stdin.read().rstrip("\n")
    return getpass.getpass(f"{what}: ")


def _client() -> Any:
    from berth.client import from_environment

    return from_environment()


def _when(stamp: float | None) -> str:
    return "never" if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


# -- tokens ----------------------------------------------------------------------------------


def _tokens_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "scopes": args.scope or ["inference"]}
    if args.endpoint:
        body["endpoints"] = args.endpoint
    if args.expires_in:
        body["expires_in"] = args.expires_in
    made = _client().request("POST", "/v1/tokens", json=body)
    print(made["token"])
    print(
        f"token {made['id']} ({', '.join(made['scopes'])}); shown this once: keep it now",
        file=sys.stderr,
    )


def _tokens_list(_: argparse.Namespace) -> None:
    print(f"{'ID':<14} {'NAME':<28} {'SCOPES':<18} {'ENDPOINTS':<20} EXPIRES")
    for t in _client().request("GET", "/v1/tokens"):
        endpoints = ",".join(t["endpoints"]) if t["endpoints"] is not None else "*"
        print(
            f"{t['id']:<14} {t['name'][:28]:<28} {','.join(t['scopes']):<18} "
            f"{endpoints[:20]:<20} {_when(t['expires_at'])}"
        )


def _tokens_delete(args: argparse.Namespace) -> None:
    print(_client().request("DELETE", f"/v1/tokens/{args.id}")["message"])


def _tokens_bootstrap(args: argparse.Namespace) -> None:
    """A token straight in the database: for a first start without ``berth up``."""
    from shared.models import Scope
    from shared.settings import ApiSettings
    from shared.tokens import bootstrap_token

    url = ApiSettings().resolved_database_url()
    scope = Scope(args.scope)
    print(bootstrap_token(url, args.name or f"bootstrap {scope.value}", [scope]))
    print(f"{scope.value} token created; shown this once: keep it now", file=sys.stderr)


# -- secrets and registry credentials --------------------------------------------------------


def _create_or_update(kind: str, key: str, fields: dict[str, str]) -> None:
    """POST it; if the key exists, PUT the new value instead."""
    from berth.client import ApiError

    client = _client()
    noun = kind.replace("-", " ")
    try:
        client.request("POST", f"/v1/{kind}", json={"key": key, **fields})
        print(f"{noun} {key} created")
    except ApiError as exc:
        if exc.status != 409:
            raise
        client.request("PUT", f"/v1/{kind}/{key}", json=fields)
        print(f"{noun} {key} updated (endpoints using it get new replicas)")


def _secrets_set(args: argparse.Namespace) -> None:
    _create_or_update("secret", args.key, {"value": _read_value(args, f"value of {args.key}")})


def _secrets_list(_: argparse.Namespace) -> None:
    for key in _client().request("GET", "/v1/secrets"):
        print(key)


def _secrets_delete(args: argparse.Namespace) -> None:
    print(_client().request("DELETE", f"/v1/secret/{args.key}")["message"])


def _rotate_key(args: argparse.Namespace) -> None:
    """Re-seal the local store under a new key. Run it with the API stopped."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from shared.db import Database, run_migrations
    from shared.settings import ApiSettings
    from shared.stores.local import LocalStore, decode_key, encode_key, load_key

    settings = ApiSettings()
    if settings.vault_addr:
        raise SystemExit("berth: BERTH_VAULT_ADDR is set: Vault manages its own keys")
    key_file = settings.resolved_secret_key_file()
    from_env = settings.secret_key.get_secret_value() if settings.secret_key else None
    old = load_key(from_env, key_file)
    new = (
        decode_key(Path(args.new_key_file).read_text())
        if args.new_key_file
        else AESGCM.generate_key(bit_length=256)
    )
    url = settings.resolved_database_url()
    run_migrations(url)

    async def rotate() -> int:
        db = Database(url)
        try:
            store = await LocalStore(db, old).open()
            return await store.rotate(new)
        finally:
            await db.close()

    if not from_env:  # the new key is safe on disk before the database depends on it
        pending = key_file.with_name(key_file.name + ".new")
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(encode_key(new) + "\n")
    count = asyncio.run(rotate())
    if from_env:
        print(encode_key(new))
        print(
            f"re-sealed {count} item(s); set BERTH_SECRET_KEY to the key above before "
            "starting the API (the old key no longer opens them)",
            file=sys.stderr,
        )
    else:
        key_file.replace(key_file.with_name(key_file.name + ".old"))
        pending.replace(key_file)
        print(
            f"re-sealed {count} item(s) under a new key in {key_file} "
            f"(the old key is in {key_file.name}.old: delete it once you have a backup)"
        )


def _credentials_set(args: argparse.Namespace) -> None:
    password = _read_value(args, f"password for {args.username}")
    _create_or_update(
        "registry-credential", args.key, {"username": args.username, "password": password}
    )


def _credentials_list(_: argparse.Namespace) -> None:
    print(json.dumps(_client().request("GET", "/v1/registry-credentials"), indent=2))


def _credentials_delete(args: argparse.Namespace) -> None:
    print(_client().request("DELETE", f"/v1/registry-credential/{args.key}")["message"])


def add_parsers(sub: Any) -> None:
    t = sub.add_parser("tokens", help="API tokens: create, list, delete").add_subparsers(
        dest="verb", required=True
    )
    c = t.add_parser("create", help="create a token; prints it once")
    c.add_argument("name")
    c.add_argument("--scope", action="append", choices=["admin", "inference", "agent", "metrics"])
    c.add_argument("--endpoint", action="append", help="limit an inference token to endpoints")
    c.add_argument("--expires-in", type=int, metavar="SECONDS")
    c.set_defaults(func=_tokens_create)
    t.add_parser("list").set_defaults(func=_tokens_list)
    d = t.add_parser("delete")
    d.add_argument("id")
    d.set_defaults(func=_tokens_delete)
    b = t.add_parser("bootstrap", help="make a token directly in the database (first start)")
    b.add_argument("--name")
    b.add_argument("--scope", default="admin", choices=["admin", "agent"])
    b.set_defaults(func=_tokens_bootstrap)

    s = sub.add_parser("secrets", help="secrets injected into replicas").add_subparsers(
        dest="verb", required=True
    )
    st = s.add_parser("set", help="create or change a secret; the value comes from stdin")
    st.add_argument("key")
    st.add_argument("--from-file")
    st.set_defaults(func=_secrets_set)
    s.add_parser("list").set_defaults(func=_secrets_list)
    sd = s.add_parser("delete")
    sd.add_argument("key")
    sd.set_defaults(func=_secrets_delete)
    sr = s.add_parser("rotate-key", help="re-seal the local store under a new key (API stopped)")
    sr.add_argument("--new-key-file", help="the new key (URL-safe base64); default: a fresh one")
    sr.set_defaults(func=_rotate_key)

    r = sub.add_parser(
        "registry-credentials", help="credentials for private image registries"
    ).add_subparsers(dest="verb", required=True)
    rs = r.add_parser("set", help="create or change one; the password comes from stdin")
    rs.add_argument("key")
    rs.add_argument("--username", required=True)
    rs.add_argument("--from-file")
    rs.set_defaults(func=_credentials_set)
    r.add_parser("list").set_defaults(func=_credentials_list)
    rd = r.add_parser("delete")
    rd.add_argument("key")
    rd.set_defaults(func=_credentials_delete)
