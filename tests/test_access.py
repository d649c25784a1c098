"""Access end to end: tokens and scopes on every route, secrets into replicas, and no leaks.

Real API, scaler and agent processes against a real nats-server; the secrets
live in the local encrypted store (test_stores.py runs the same contract on Vault,
and test_vault_e2e.py runs this path with a Vault-backed API).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.e2e

BAD_TOKEN = "berth_000000000000_" + "x" * 43


def make_token(stack: Stack, **body: Any) -> dict[str, Any]:
    with stack.client() as c:
        resp = c.post("/v1/tokens", json={"name": "test", **body})
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def call(stack: Stack, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
    """One call; a stream that is let through is answered by its status, unread."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with (
        httpx.Client(base_url=stack.url, timeout=60) as c,
        c.stream(method, path, headers=headers, **kw) as resp,
    ):
        if resp.status_code >= 400 or "ndjson" not in resp.headers.get("content-type", ""):
            resp.read()
        return resp


def expired_token(stack: Stack) -> str:
    token = make_token(stack, scopes=["admin"], expires_in=1)["token"]
    wait_for(
        lambda: call(stack, "GET", "/v1/endpoints", token).status_code == 401,
        10,
        "the token to expire",
    )
    return str(token)


# -- tokens ------------------------------------------------------------------------------------


def test_tokens_are_shown_once_stored_hashed_and_deleted_at_once(stack: Stack) -> None:
    made = make_token(stack, scopes=["inference"], endpoints=["some-endpoint"])
    assert made["token"].startswith(f"berth_{made['id']}_")
    assert made["scopes"] == ["inference"] and made["endpoints"] == ["some-endpoint"]
    with stack.client() as c:
        listed = c.get("/v1/tokens")
        assert listed.status_code == 200
        mine = [t for t in listed.json() if t["id"] == made["id"]]
        assert mine and "token" not in mine[0] and "secret_sha256" not in mine[0]
        assert made["token"].split("_")[2] not in listed.text
        assert c.delete(f"/v1/tokens/{made['id']}").status_code == 200
        assert c.delete(f"/v1/tokens/{made['id']}").status_code == 404
    resp = call(stack, "POST", "/e/some-endpoint/infer", made["token"], json={})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": ["admin"], "endpoints": ["a"]}, "inference tokens only"),
        ({"name": "x", "scopes": ["inference"], "endpoints": ["Not_A_Name"]}, "endpoint name"),
        ({"name": "x", "scopes": ["admin"], "expires_in": 0}, "expires_in"),
        ({"scopes": ["admin"]}, "name"),
    ],
)
def test_bad_token_requests_are_422(stack: Stack, body: dict[str, Any], fragment: str) -> None:
    with stack.client() as c:
        resp = c.post("/v1/tokens", json=body)
    assert resp.status_code == 422 and fragment in resp.json()["error"]["message"], resp.text


# -- the auth matrix ---------------------------------------------------------------------------


def control_routes(stack: Stack) -> list[tuple[str, str]]:
    """Every control-plane route the API serves, read from its own OpenAPI document."""
    schema = httpx.get(f"{stack.url}/openapi.json", timeout=10).json()
    routes = []
    for path, ops in schema["paths"].items():
        for method in ops:
            routes.append((method.upper(), re.sub(r"\{[^}]+\}", "matrix-x", path)))
    return routes


def test_every_control_route_needs_an_admin_token(stack: Stack, name: str) -> None:
    routes = control_routes(stack)
    families = {path.split("/")[2] for _, path in routes if path.startswith("/v1/")}
    assert {
        "endpoint",
        "endpoints",
        "tokens",
        "secret",
        "registry-credential",
        "events",
    } <= families
    stack.deploy(name, visibility="public")  # a public endpoint opens none of these
    inference = make_token(stack, scopes=["inference"])["token"]
    agent = make_token(stack, scopes=["agent"])["token"]
    expired = expired_token(stack)
    checked = 0
    for method, path in routes:
        if not path.startswith("/v1/"):
            continue
        path = path.replace("matrix-x", name) if "/endpoint/" in path else path
        # Async jobs are their submitter's (test_jobs.py): a valid token that is not an
        # admin's learns only that no such job exists.
        job_route = path.startswith(("/v1/requests/", "/v1/responses/"))
        # Any valid token reads and rotates its own webhook signing secret, nothing else.
        own_route = path.startswith("/v1/webhook-secret")
        denied = 200 if own_route else 404 if job_route else 403
        anonymous = 401
        # A public asset is anyone's to read (a private one is not found but by an admin);
        # an upload URL is its own authority, whatever token comes with it.
        if method == "GET" and path.startswith("/v1/assets"):
            anonymous = denied = 200 if path == "/v1/assets" else 404
        upload = method == "PUT" and path.endswith("/upload")
        for token, status in (
            (None, 404 if upload else anonymous),
            (BAD_TOKEN, 404 if upload else 401),
            ("not-even-a-token", 404 if upload else 401),
            (expired, 404 if upload else 401),
            (inference, 404 if upload else denied),
            (agent, 404 if upload else denied),
        ):
            resp = call(stack, method, path, token, json={})
            assert resp.status_code == status, (method, path, token, resp.text)
            if status == 200 and own_route:
                assert resp.json()["secret"].startswith("whsec_")
                continue
            if status == 200:
                assert resp.json()["data"] == [] or all(a["is_public"] for a in resp.json()["data"])
                continue
            assert resp.json()["error"]["code"] in ("unauthorized", "forbidden", "not_found")
            if status == 401:
                assert resp.headers["www-authenticate"] == "Bearer"
        resp = call(stack, method, path, stack.token, json={})
        assert resp.status_code not in (401, 403), (method, path, resp.text)
        checked += 1
    assert checked >= 15


def test_data_plane_scopes(stack: Stack, name: str) -> None:
    other = name[:-5] + "-oth"
    public = name[:-5] + "-pub"
    stack.deploy(name)
    stack.deploy(other)
    stack.deploy(public, visibility="public")
    try:
        mine = make_token(stack, scopes=["inference"], endpoints=[name])["token"]
        theirs = make_token(stack, scopes=["inference"], endpoints=[other])["token"]
        every = make_token(stack, scopes=["inference"])["token"]
        agent = make_token(stack, scopes=["agent"])["token"]
        expired = expired_token(stack)
        url = f"/e/{name}/infer"
        body = {"json": {"prompt": "p"}}
        for token, status in (
            (None, 401),
            (BAD_TOKEN, 401),
            (expired, 401),
            (agent, 403),
            (theirs, 403),
            (mine, 200),
            (every, 200),
            (stack.token, 200),
        ):
            resp = call(stack, "POST", url, token, **body)
            assert resp.status_code == status, (token, resp.text)
            assert resp.headers["x-user-request-id"]
        assert call(stack, "POST", f"/e/{public}/infer", None, **body).status_code == 200
        # A public endpoint's control plane stays private.
        assert call(stack, "GET", f"/v1/endpoint/{public}", None).status_code == 401
        assert call(stack, "GET", f"/v1/endpoint/{public}", every).status_code == 403
        # Whether an endpoint exists is not told to strangers.
        assert call(stack, "POST", "/e/no-such-endpoint/infer", None, **body).status_code == 401
        assert call(stack, "POST", "/e/no-such-endpoint/infer", every, **body).status_code == 404
    finally:
        with stack.client() as c:
            c.delete(f"/v1/endpoint/{other}")
            c.delete(f"/v1/endpoint/{public}")


# -- secrets and registry credentials ----------------------------------------------------------


def test_secrets_api(stack: Stack, name: str) -> None:
    key = "S_" + secrets.token_hex(4).upper()
    value = "val-" + secrets.token_hex(8)
    with stack.client() as c:
        made = c.post("/v1/secret", json={"key": key, "value": value})
        assert made.status_code == 201 and made.json()["key"] == key
        assert value not in made.text
        assert c.post("/v1/secret", json={"key": key, "value": "x"}).status_code == 409
        assert key in c.get("/v1/secrets").json()
        got = c.get(f"/v1/secret/{key}")
        assert got.status_code == 200 and "value" not in got.json() and value not in got.text
        assert c.put(f"/v1/secret/{key}", json={"value": "v2"}).status_code == 200
        assert c.put("/v1/secret/NOPE_MISSING", json={"value": "v"}).status_code == 404
        assert c.get("/v1/secret/NOPE_MISSING").status_code == 404
        assert c.get("/v1/secret/..%2F..%2Fsys").status_code == 404
        for bad in (
            {"key": "1STARTS_WITH_DIGIT", "value": "v"},
            {"key": "has-dash", "value": "v"},
            {"key": "../escape", "value": "v"},
            {"key": "EMPTY", "value": ""},
            {"key": "NUL", "value": "a\x00b"},
            {"key": "NO_VALUE"},
        ):
            resp = c.post("/v1/secret", json=bad)
            assert resp.status_code == 422, (bad, resp.text)
            assert "a\x00b" not in resp.text

        # Endpoints may only name secrets and credentials that exist.
        with pytest.raises(RuntimeError, match=r"422.*NOPE_MISSING"):
            stack.deploy(name, container_secrets=["NOPE_MISSING"])
        stack.deploy(name, container_secrets=[key])
        resp = c.patch(f"/v1/endpoint/{name}", json={"registry_credential": "nope-missing"})
        assert resp.status_code == 422 and "nope-missing" in resp.text

        # In use: deleting is refused, naming the endpoint.
        resp = c.delete(f"/v1/secret/{key}")
        assert resp.status_code == 409 and resp.json()["error"]["details"]["endpoints"] == [name]
        assert c.patch(f"/v1/endpoint/{name}", json={"container_secrets": []}).status_code == 200
        assert c.delete(f"/v1/secret/{key}").status_code == 200
        assert c.delete(f"/v1/secret/{key}").status_code == 404


def test_registry_credentials_api(stack: Stack, name: str) -> None:
    key = "reg-" + secrets.token_hex(3)
    password = "pw-" + secrets.token_hex(8)
    with stack.client() as c:
        made = c.post(
            "/v1/registry-credential", json={"key": key, "username": "bot", "password": password}
        )
        assert made.status_code == 201 and made.json()["key"] == key
        assert made.json()["username"] == "bot" and password not in made.text
        again = {"key": key, "username": "b", "password": "p"}
        assert c.post("/v1/registry-credential", json=again).status_code == 409
        listed = c.get("/v1/registry-credentials")
        assert {"key": key, "username": "bot"}.items() <= next(
            r for r in listed.json() if r["key"] == key
        ).items()
        assert password not in listed.text
        changed = c.put(f"/v1/registry-credential/{key}", json={"username": "u2", "password": "p2"})
        assert changed.status_code == 200 and changed.json()["username"] == "u2"
        assert c.get(f"/v1/registry-credential/{key}").json()["username"] == "u2"
        bad = {"key": "has space", "username": "u", "password": "p"}
        assert c.post("/v1/registry-credential", json=bad).status_code == 422
        stack.deploy(name, registry_credential=key)
        resp = c.delete(f"/v1/registry-credential/{key}")
        assert resp.status_code == 409 and name in resp.json()["error"]["message"]
        c.delete(f"/v1/endpoint/{name}")
        assert c.delete(f"/v1/registry-credential/{key}").status_code == 200


def test_secrets_reach_only_their_endpoints_replicas_and_changes_roll_them(
    stack: Stack, name: str
) -> None:
    key = "S_" + secrets.token_hex(4).upper()
    other = name[:-5] + "-oth"
    with stack.client() as c:
        assert c.post("/v1/secret", json={"key": key, "value": "first"}).status_code == 201
        stack.deploy(name, container_secrets=[key], env_overrides={key: "not-the-secret"})
        stack.deploy(other)
        try:
            got = c.post(f"/e/{name}/env", json={"name": key})
            assert got.status_code == 200, got.text
            assert got.json()["output"]["value"] == "first"  # the secret wins over env_overrides
            got = c.post(f"/e/{other}/env", json={"name": key})
            assert got.json()["output"]["value"] is None
            # A new value replaces the endpoint's replicas; the next ones see it.
            assert c.put(f"/v1/secret/{key}", json={"value": "second"}).status_code == 200
            wait_for(
                lambda: (
                    c.post(f"/e/{name}/env", json={"name": key}).json()["output"]["value"]
                    == "second"
                ),
                30,
                "replicas with the new secret value",
            )
        finally:
            c.delete(f"/v1/endpoint/{name}")
            c.delete(f"/v1/endpoint/{other}")
            c.delete(f"/v1/secret/{key}")


def test_greeter_example_reads_its_secret(stack: Stack, name: str) -> None:
    with stack.client() as c:
        c.delete("/v1/secret/GREETING")
        assert c.post("/v1/secret", json={"key": "GREETING", "value": "Ahoy"}).status_code == 201
        try:
            stack.deploy(name, "greeter", container_secrets=["GREETING"])
            resp = c.post(f"/e/{name}/infer", json={"name": "Ada"})
            assert resp.status_code == 200, resp.text
            assert resp.json()["output"] == {"text": "Ahoy, Ada!"}
        finally:
            c.delete(f"/v1/endpoint/{name}")
            c.delete("/v1/secret/GREETING")


# -- no leaks ----------------------------------------------------------------------------------


async def nats_contents(url: str) -> bytes:
    """Every message in every stream (requests, events, KV buckets, object store)."""
    nc = await nats.connect(url)
    out = bytearray()
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            assert info.state.messages < 50_000, info.config.name
            for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(info.config.name, seq)
                except NotFoundError:
                    continue
                out += (msg.subject or "").encode() + repr(msg.headers).encode() + (msg.data or b"")
    finally:
        await nc.close()
    return bytes(out)


def test_planted_secrets_appear_in_no_output(stack: Stack, name: str, nats_server: Any) -> None:
    canary = "canary-" + secrets.token_hex(12)
    password = "regpw-" + secrets.token_hex(12)
    leaky = name[:-5] + "-leak"
    seen: list[str] = []
    with stack.client() as c:
        c.delete("/v1/secret/LEAK_CANARY")
        assert c.post("/v1/secret", json={"key": "LEAK_CANARY", "value": canary}).status_code == 201
        cred = {"key": "leak-reg", "username": "bot", "password": password}
        c.delete("/v1/registry-credential/leak-reg")
        assert c.post("/v1/registry-credential", json=cred).status_code == 201
        try:
            stack.deploy(name, container_secrets=["LEAK_CANARY"], registry_credential="leak-reg")
            served = c.post(f"/e/{name}/infer", json={"prompt": "p"})
            assert served.status_code == 200, served.text
            # A model that prints its secret and fails with it in the message.
            stack.deploy(leaky, "leaky", container_secrets=["LEAK_CANARY"])
            failed = c.post(f"/e/{leaky}/infer", json={"prompt": "p"})
            assert failed.status_code == 503, failed.text
            assert "[redacted]" in failed.text  # the reason is there, the value is not
            seen += [served.text, failed.text]
            for path in (
                "/v1/endpoints",
                f"/v1/endpoint/{name}",
                f"/v1/endpoint/{leaky}",
                "/v1/secrets",
                "/v1/secret/LEAK_CANARY",
                "/v1/registry-credentials",
                "/v1/registry-credential/leak-reg",
                f"/v1/events/{name}",
                f"/v1/events/{leaky}",
                "/v1/tokens",
            ):
                resp = c.get(path)
                assert resp.status_code == 200, (path, resp.text)
                seen.append(resp.text)
            assert "[redacted]" in c.get(f"/v1/events/{leaky}").text
        finally:
            c.delete(f"/v1/endpoint/{name}")
            c.delete(f"/v1/endpoint/{leaky}")
            c.delete("/v1/secret/LEAK_CANARY")
            c.delete("/v1/registry-credential/leak-reg")

    outputs: dict[str, bytes] = {f"response {i}": t.encode() for i, t in enumerate(seen)}
    for proc, log in stack.logs.items():  # the API's, the scaler's and the agent's logs
        outputs[f"{proc} log"] = log.read_bytes()
    outputs["NATS streams"] = asyncio.run(nats_contents(nats_server.url))
    for db_file in Path(stack.data_dir).glob("berth.db*"):
        outputs[db_file.name] = db_file.read_bytes()
    assert len(outputs) >= 15
    for where, data in outputs.items():
        for planted in (canary, password):
            assert planted.encode() not in data, f"{planted[:6]}… leaked into {where}"


def test_database_tokens_alone_and_the_last_admin_token_is_kept(
    own_nats: Any, tmp_path: Path
) -> None:
    """No BERTH_ADMIN_TOKEN: a bootstrap token in the database is the way in, and the API
    refuses to delete the last admin token, which would lock everyone out."""
    from shared.models import Scope
    from shared.tokens import bootstrap_token

    data = tmp_path / "berth"
    data.mkdir()
    first = bootstrap_token(f"sqlite:///{data / 'berth.db'}", "boot", [Scope.ADMIN])
    stack = Stack(data, own_nats.url, env={"BERTH_ADMIN_TOKEN": ""})
    stack.token = first
    try:
        stack.start("api")
        first_id = first.split("_")[1]
        with stack.client() as c:
            resp = c.delete(f"/v1/tokens/{first_id}")
            assert resp.status_code == 409 and "last admin token" in resp.text
            second = make_token(stack, scopes=["admin"])["token"]
            assert c.delete(f"/v1/tokens/{first_id}").status_code == 200
        assert call(stack, "GET", "/v1/tokens", first).status_code == 401
        assert call(stack, "GET", "/v1/tokens", second).status_code == 200
    finally:
        stack.close()
