"""The asset library against a running Berth: OctoAI's shapes, streamed uploads checked
by size and sha256, identical content stored once, assets mounted read-only into a
process replica, and an asset in use refused deletion."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.assets import has_content
from broker.connection import Broker
from tests.conftest import FAST, MODELS, ROOT, NatsServer, Stack, wait_for

PNG_HEADER = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.e2e


def _create(c: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "asset_type": "file", "data": {"asset_type": "file"}, **fields}
    resp = c.post("/v1/assets", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _upload(c: httpx.Client, name: str, content: bytes, **fields: Any) -> dict[str, Any]:
    made = _create(c, name, **fields)
    put = httpx.put(made["transfer_api"]["put_url"], content=content, timeout=60)  # no token
    assert put.status_code == 200, put.text
    done = c.post(f"/v1/assets/{made['asset']['id']}/complete-upload", json={})
    assert done.status_code == 200 and done.json() == {}, done.text
    return made["asset"]  # type: ignore[no-any-return]


def _unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def test_an_asset_goes_through_octoai_s_flow(stack: Stack) -> None:
    content = os.urandom(300_000)
    name = _unique("weights")
    with stack.client() as c:
        made = _create(
            c, name, asset_type="lora",
            data={"asset_type": "lora", "engine": "image/stable-diffusion-xl-v1-0",
                  "data_type": "fp16", "file_format": "safetensors", "trigger_words": ["x"]},
            description=None, is_public=False, url=None,
            skip_validation=True,
        )  # fmt: skip
        asset, transfer = made["asset"], made["transfer_api"]
        assert asset["status"] == "ready_to_upload" and asset["id"].startswith("asset_")
        assert asset["description"] == "" and asset["status_details"] == ""
        assert isinstance(asset["created_at"], str) and asset["tenant_uuid"]
        assert transfer["type"] == "presigned-url" and made["token"] == ""
        # The upload URL needs no token; a wrong one is refused.
        bad = httpx.put(transfer["put_url"] + "x", content=b"nope", timeout=10)
        assert bad.status_code == 403 and bad.json()["error"]["message"]
        put = httpx.put(transfer["put_url"], content=content, timeout=30)
        assert put.status_code == 200, put.text
        assert put.json()["sha256"] == hashlib.sha256(content).hexdigest()
        done = c.post(f"/v1/assets/{asset['id']}/complete-upload", json={"token": ""})
        assert done.status_code == 200 and done.json() == {}
        # By id, by name, by owner/name, and through octoai-sdk 0.10's //v1 paths.
        for path in (
            f"/v1/assets/{asset['id']}",
            f"/v1/assets/{name}",
            f"/v1/assets/{asset['tenant_uuid']}/{name}",
            f"{stack.url}//v1/assets/{asset['id']}",  # a whole URL: httpx keeps its //
        ):
            got = c.get(path)
            assert got.status_code == 200, (path, got.text)
            assert got.json()["asset"]["status"] == "ready", path
            assert got.json()["asset"]["size_bytes"] == len(content)
            assert got.json()["transfer_api"] == {"type": "none"}
        assert c.get(f"/v1/assets/someone-else/{name}").status_code == 404
        down = c.get(f"/v1/assets/{asset['id']}/download")
        assert down.status_code == 200 and down.content == content
        # Anonymous callers see public assets only.
        with httpx.Client(base_url=stack.url, timeout=10) as anon:
            assert anon.get(f"/v1/assets/{asset['id']}").status_code == 404
            assert name not in [a["name"] for a in anon.get("/v1/assets").json()["data"]]
            assert anon.post("/v1/assets", json={}).status_code == 401
        gone = c.delete(f"/v1/assets/{asset['id']}")
        assert gone.status_code == 200 and gone.json()["id"] == asset["id"]
        assert gone.json()["deleted_at"]
        assert c.get(f"/v1/assets/{asset['id']}").json()["asset"]["status"] == "deleted"
        assert c.delete(f"/v1/assets/{asset['id']}").status_code == 404


def test_listing_filters_and_pages_as_the_clients_send_them(stack: Stack) -> None:
    tag = secrets.token_hex(3)
    with stack.client() as c:
        made = [
            _create(c, f"list-{tag}-a", asset_type="lora",
                    data={"asset_type": "lora", "engine": "image/stable-diffusion-v1-5"}),
            _create(c, f"list-{tag}-b", asset_type="vae",
                    data={"asset_type": "vae", "engine": "image/stable-diffusion-xl-v1-0"}),
            _create(c, f"list-{tag}-c", data={"asset_type": "file", "file_format": "txt"},
                    is_public=True),
        ]  # fmt: skip

        def names(**params: Any) -> list[str]:
            resp = c.get("/v1/assets", params={"name": f"list-{tag}", **params})
            assert resp.status_code == 200, resp.text
            return sorted(a["name"] for a in resp.json()["data"])

        a, b, cc = (m["asset"]["name"] for m in made)
        assert names() == [a, b, cc]
        assert names(asset_type=["lora", "vae"]) == [a, b]  # repeated (Python clients)
        assert names(asset_type="lora,vae") == [a, b]  # comma-joined (TypeScript)
        assert names(engine="image/stable-diffusion-v1-5") == [a]
        assert names(engine_type="image") == [a, b]
        assert names(is_public="true") == [cc]
        assert names(file_format="txt") == [cc]
        assert names(asset_ids=f"{made[0]['asset']['id']},{made[2]['asset']['id']}") == [a, cc]
        page = c.get("/v1/assets", params={"name": f"list-{tag}", "limit": 2}).json()
        assert len(page["data"]) == 2 and page["total"] == 3 and page["has_more"] is True
        last = c.get("/v1/assets", params={"name": f"list-{tag}", "limit": 2, "offset": 2}).json()
        assert len(last["data"]) == 1 and last["has_more"] is False
        assert c.get("/v1/assets", params={"limit": 0}).status_code == 422
        # Bad creates: a clear 422 each.
        for body in (
            {"name": "bad name!", "asset_type": "file", "data": {"asset_type": "file"}},
            {"name": "x", "asset_type": "file", "data": {"asset_type": "lora"}},
            {"name": "x", "asset_type": "nope", "data": {}},
            {"name": "x", "asset_type": "file", "data": {}, "transfer_api_type": "sts"},
            {"name": "x", "asset_type": "file", "data": {}, "url": "ftp://127.0.0.1/x"},
            {"name": "x", "asset_type": "file", "data": {}, "url": "/relative/x"},
            {"name": "x", "asset_type": "file", "data": {}, "url": "http://h:99999/x"},
            {"name": "x", "asset_type": "file", "data": {}, "hf_repo": "org/repo"},
        ):
            resp = c.post("/v1/assets", json=body)
            assert resp.status_code == 422, (body, resp.text)
        assert (
            c.post("/v1/assets", json={"name": a, "asset_type": "file", "data": {}}).status_code
            == 409
        )


def test_an_upload_is_checked_and_may_be_tried_again(stack: Stack) -> None:
    content = b"some bytes " * 1000
    digest = hashlib.sha256(content).hexdigest()
    with stack.client() as c:
        made = _create(c, _unique("checked"), sha256=digest, size_bytes=len(content))
        url, asset_id = made["transfer_api"]["put_url"], made["asset"]["id"]
        wrong = httpx.put(url, content=content[:-1] + b"!", timeout=10)
        assert wrong.status_code == 422 and "sha256" in wrong.json()["error"]["message"]
        short = httpx.put(url, content=content[:100], timeout=10)
        assert short.status_code == 422 and "bytes" in short.json()["error"]["message"]
        assert c.get(f"/v1/assets/{asset_id}").json()["asset"]["status"] == "ready_to_upload"
        assert httpx.put(url, content=content, timeout=10).status_code == 200
        assert c.post(f"/v1/assets/{asset_id}/complete-upload", json={}).json() == {}
        # Ready: no second upload.
        assert httpx.put(url, content=content, timeout=10).status_code in (403, 409)

        # Content that is not what its file_format says is rejected, with the reason.
        bad = _create(
            c, _unique("notsafetensors"), asset_type="checkpoint",
            data={"asset_type": "checkpoint", "engine": "image/stable-diffusion-v1-5",
                  "file_format": "safetensors"},
        )  # fmt: skip
        resp = httpx.put(bad["transfer_api"]["put_url"], content=b"\xff" * 64, timeout=10)
        assert resp.status_code == 422 and "safetensors" in resp.json()["error"]["message"]
        done = c.post(f"/v1/assets/{bad['asset']['id']}/complete-upload", json={}).json()
        assert "safetensors" in done["error"]
        got = c.get(f"/v1/assets/{bad['asset']['id']}").json()["asset"]
        assert got["status"] == "rejected" and "safetensors" in got["status_details"]

        # complete-upload with nothing uploaded: rejected, not ready.
        empty = _create(c, _unique("empty"))
        done = c.post(f"/v1/assets/{empty['asset']['id']}/complete-upload", json={}).json()
        assert done["error"] == "nothing was uploaded"


def test_identical_content_is_stored_once_and_kept_while_named(stack: Stack) -> None:
    content = os.urandom(50_000)
    with stack.client() as c:
        one = _upload(c, _unique("same-a"), content)
        two = _upload(c, _unique("same-b"), content)
        assert c.delete(f"/v1/assets/{one['id']}").status_code == 200
        down = c.get(f"/v1/assets/{two['id']}/download")  # the content stayed for the other
        assert down.status_code == 200 and down.content == content
        assert c.delete(f"/v1/assets/{two['id']}").status_code == 200
        # Named by nobody now: a new asset of the same content uploads it again.
        three = _upload(c, _unique("same-c"), content)
        assert c.get(f"/v1/assets/{three['id']}/download").content == content


def test_a_replica_reads_its_assets_and_cannot_change_them(stack: Stack, name: str) -> None:
    content = os.urandom(1_000_000)
    digest = hashlib.sha256(content).hexdigest()
    asset_name = _unique("mounted")
    with stack.client() as c:
        asset = _upload(c, asset_name, content)
        missing = c.post(
            "/v1/endpoint",
            json={"name": name, "model_id": "x", "assets": ["no-such-asset"]},
        )
        assert missing.status_code == 422
        stack.deploy(name, "assets", min_replicas=1, max_replicas=1, assets=[asset_name])
        stack.wait_ready(name)
        ep = c.get(f"/v1/endpoint/{name}").json()
        assert ep["assets"] == [asset["id"]]  # stored by id
        out = c.post(f"/e/{name}/infer", json={"name": asset_name})
        assert out.status_code == 200, out.text
        got = out.json()["output"]
        assert got["names"] == [asset_name]
        assert got["sha256"] == digest and got["size"] == len(content)
        assert got["write"] != "changed it" and got["write_real"] != "changed it", got
        # The fetch showed in the endpoint's events.
        kinds = [e["event"]["type"] for e in c.get(f"/v1/events/{name}").json()]
        assert "asset_fetching" in kinds and "asset_fetched" in kinds
        # In use: it cannot be deleted.
        refused = c.delete(f"/v1/assets/{asset['id']}")
        assert refused.status_code == 409 and name in refused.json()["error"]["message"]
        # The endpoint lets go of it: then it can.
        assert c.patch(f"/v1/endpoint/{name}", json={"assets": []}).status_code == 200
        assert c.delete(f"/v1/assets/{asset['id']}").status_code == 200


def test_a_second_endpoint_finds_the_asset_cached(stack: Stack, name: str) -> None:
    asset_name = _unique("cached")
    with stack.client() as c:
        _upload(c, asset_name, os.urandom(10_000))
        first, second = f"{name[:50]}-1", f"{name[:50]}-2"
        try:
            for ep in (first, second):
                stack.deploy(ep, "assets", min_replicas=1, max_replicas=1, assets=[asset_name])
                stack.wait_ready(ep)
                assert c.post(f"/e/{ep}/infer", json={"name": asset_name}).status_code == 200
            kinds = [e["event"]["type"] for e in c.get(f"/v1/events/{second}").json()]
            assert "asset_fetching" not in kinds, kinds
        finally:
            for ep in (first, second):
                c.delete(f"/v1/endpoint/{ep}")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_200_mb_upload_streams_with_bounded_memory(stack: Stack, tmp_path: Path) -> None:
    """The SDK uploads a 200 MiB file in a process of its own: neither it nor the API
    grows with the upload (both peaks are printed)."""
    big = tmp_path / "big.bin"
    block = os.urandom(1024 * 1024)
    with big.open("wb") as f:
        for i in range(200):
            f.write(block[:-8] + i.to_bytes(8, "big"))
    api = stack.procs["api"].pid
    peak, stop = [_rss_mib(api)], threading.Event()
    base = peak[0]

    def sample() -> None:
        while not stop.wait(0.05):
            peak.append(_rss_mib(api))

    # VmHWM, not ru_maxrss: the latter keeps the forking parent's (pytest's) peak.
    script = (
        "import json, sys\n"
        "from berth import Client\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) / 1024\n"
        "before = status('VmRSS:')\n"
        "asset = Client().upload_asset(sys.argv[1], sys.argv[2])\n"
        "print(json.dumps({'before': before, 'peak': status('VmHWM:'),\n"
        "                  'sha256': asset.sha256, 'status': asset.status, 'id': asset.id}))\n"
    )
    env = {**os.environ, "BERTH_URL": stack.url, "BERTH_TOKEN": stack.token}
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run = subprocess.run(
            [sys.executable, "-c", script, str(big), _unique("big")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        stop.set()
        sampler.join()
    assert run.returncode == 0, run.stderr[-3000:]
    client = json.loads(run.stdout)
    assert client["status"] == "ready"
    assert client["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    with stack.client() as c:
        c.delete(f"/v1/assets/{client['id']}")
    grew = max(peak) - base
    print(
        f"200 MiB upload: API RSS {base:.0f} -> peak {max(peak):.0f} MiB; "
        f"SDK client RSS {client['before']:.0f} -> peak {client['peak']:.0f} MiB"
    )
    assert grew < 64, f"the API grew {grew:.0f} MiB during a 200 MiB upload"
    assert client["peak"] - client["before"] < 64, client
    wait_for(lambda: not list((stack.data_dir / "asset-uploads").glob("*")), 10, "spool empty")


def test_an_upload_cut_off_by_an_api_crash_is_tried_again_cleanly(stack: Stack) -> None:
    """The API is killed mid-upload: the caller sees the connection fail, the asset is
    still ready_to_upload, the restarted API removes the dead upload's spool file, and the
    same URL takes the upload again."""
    block = os.urandom(1024 * 1024)
    halfway = threading.Event()

    def slow_body() -> Iterator[bytes]:
        for i in range(400):
            if i == 20:
                halfway.set()
            if i >= 20:
                stop.wait(0.05)
            yield block

    stop = threading.Event()
    with stack.client() as c:
        made = _create(c, _unique("cutoff"))
    failure: list[BaseException] = []

    def put() -> None:
        try:
            httpx.put(made["transfer_api"]["put_url"], content=slow_body(), timeout=60)
        except httpx.HTTPError as exc:
            failure.append(exc)

    sender = threading.Thread(target=put, daemon=True)
    sender.start()
    assert halfway.wait(30)
    spool = stack.data_dir / "asset-uploads"
    wait_for(lambda: list(spool.glob(f"{made['asset']['id']}.*")), 10, "the spool file")
    stack.stop("api", signal.SIGKILL)
    stop.set()
    sender.join(30)
    assert failure, "the upload should have failed with the API gone"
    stack.start("api")
    assert not list(spool.glob(f"{made['asset']['id']}.*"))  # the dead upload's file is gone
    content = os.urandom(100_000)
    with stack.client() as c:
        asset_id = made["asset"]["id"]
        assert c.get(f"/v1/assets/{asset_id}").json()["asset"]["status"] == "ready_to_upload"
        again = httpx.put(made["transfer_api"]["put_url"], content=content, timeout=30)
        assert again.status_code == 200, again.text
        assert c.post(f"/v1/assets/{asset_id}/complete-upload", json={}).json() == {}
        assert c.get(f"/v1/assets/{asset_id}/download").content == content


def test_the_cli_uploads_mounts_tunes_and_deletes(stack: Stack, name: str, tmp_path: Path) -> None:
    env = {**os.environ, "BERTH_URL": stack.url, "BERTH_TOKEN": stack.token}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "berth.cli", *args],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"a": "A ship in the harbour", "b": "A boat at the dock", "label": 1}\n'
        '{"a": "A ship in the harbour", "b": "Two eggs and flour", "label": 0}\n'
    )
    asset = f"cli-{secrets.token_hex(3)}"
    up = cli("assets", "upload", str(pairs), "--name", asset, "--data", '{"file_format": "jsonl"}')
    assert up.returncode == 0 and f"asset {asset} ready" in up.stdout, up.stdout + up.stderr
    assert asset in cli("assets", "list", "--name", asset).stdout
    deployed = cli(
        "deploy", str(MODELS / "assets"), "--name", name, "--asset", asset, "--min-replicas", "1"
    )
    assert deployed.returncode == 0, deployed.stderr
    stack.wait_ready(name)
    out = cli("infer", name, json.dumps({"name": asset}))
    assert json.loads(out.stdout)["output"]["names"] == [asset], out.stdout + out.stderr
    asset_id = json.loads(cli("assets", "get", asset).stdout)["id"]
    refused = cli("assets", "delete", asset_id)
    assert refused.returncode != 0 and "used by endpoint" in refused.stderr
    assert cli("delete", name).returncode == 0

    tuned = cli("tunes", "create", f"cli-tune-{asset}", "--file", asset, "--steps", "30", "--wait")
    assert tuned.returncode == 0 and "succeeded" in tuned.stdout, tuned.stdout + tuned.stderr
    assert f"cli-tune-{asset}" in cli("tunes", "list").stdout
    assert cli("assets", "delete", asset_id).returncode == 0


class Served:
    """A small HTTP server on 127.0.0.1 answering each path with what ``routes`` says."""

    def __init__(self, routes: dict[str, tuple[int, bytes]]):
        self.routes = routes
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                status, body = outer.routes.get(self.path.split("?")[0], (404, b"not here"))
                self.send_response(status)
                if status in (301, 302):
                    self.send_header("location", body.decode())
                    body = b""
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _settled(c: httpx.Client, asset_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        asset: dict[str, Any] = c.get(f"/v1/assets/{asset_id}").json()["asset"]
        return asset if asset["status"] != "uploaded" else None

    return wait_for(ended, 60, f"asset {asset_id} to leave uploaded")


def test_an_asset_from_a_url_is_fetched_checked_and_stored(stack: Stack) -> None:
    """OctoAI's create with ``url``: no upload; the API fetches it (redirects followed),
    checks it like an upload and stores it; a bad answer, a wrong digest or content that
    is not what data.file_format says ends the asset rejected, with the reason."""
    png = PNG_HEADER + os.urandom(4000)
    served = Served(
        {
            "/lora.png": (200, png),
            "/moved": (302, b"/lora.png"),
            "/not-png": (200, b"plain text"),
        }
    )
    tag = secrets.token_hex(3)
    try:
        with stack.client() as c:
            made = _create(
                c,
                f"fromurl-{tag}",
                url=f"{served.url}/moved?signature=secret",
                transfer_api_type="sts",  # octoai 1.x's default beside a url
                data={"asset_type": "file", "file_format": "png"},
                sha256=hashlib.sha256(png).hexdigest(),
            )
            assert made["transfer_api"] == {"type": "none"}
            assert made["asset"]["status"] == "uploaded"
            assert "signature" not in json.dumps(made)  # the URL is never shown back
            ready = _settled(c, made["asset"]["id"])
            assert ready["status"] == "ready", ready["status_details"]
            assert ready["size_bytes"] == len(png)
            got = c.get(f"/v1/assets/{made['asset']['id']}/download")
            assert got.content == png
            assert served.hits[:2] == ["/moved?signature=secret", "/lora.png"]

            for path, fields, reason in (
                ("/missing", {}, "answered 404"),
                ("/not-png", {}, "not a png file"),
                ("/lora.png", {"sha256": "0" * 64}, "not the"),
            ):
                bad = _create(
                    c,
                    f"fromurl-bad-{secrets.token_hex(3)}",
                    url=served.url + path,
                    data={"asset_type": "file", "file_format": "png"},
                    **fields,
                )
                ended = _settled(c, bad["asset"]["id"])
                assert ended["status"] == "rejected", ended
                assert reason in ended["status_details"], ended
    finally:
        served.close()


def test_an_asset_url_on_a_private_address_is_not_fetched(
    own_nats: NatsServer, tmp_path: Path
) -> None:
    """Without BERTH_ASSET_URL_ALLOW_PRIVATE, a URL naming the host's loopback (or one
    redirecting there) ends the asset in error, and nothing is asked of that address."""
    served = Served({"/x.bin": (200, b"private")})
    env = {**FAST, "BERTH_ASSET_URL_ALLOW_PRIVATE": "false"}
    api = Stack(tmp_path / "berth", own_nats.url, env=env)
    try:
        api.start("api")
        with api.client() as c:
            made = _create(c, "private", url=f"{served.url}/x.bin", data={"asset_type": "file"})
            ended = _settled(c, made["asset"]["id"])
        assert ended["status"] == "error", ended
        assert "may not be fetched" in ended["status_details"], ended
        assert served.hits == []
    finally:
        api.close()
        served.close()


def test_a_url_fetch_cut_off_by_an_api_crash_is_done_again(stack: Stack) -> None:
    """The API is killed while it fetches an asset's URL: the asset stays uploaded, and the
    restarted API fetches it again, to ready with the right content."""
    content = os.urandom(2 * 1024 * 1024)
    halfway, release = threading.Event(), threading.Event()
    hits: list[int] = []

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(1)
            self.send_response(200)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            if len(hits) == 1:  # the first fetch stalls halfway, until the test is done
                self.wfile.write(content[: len(content) // 2])
                self.wfile.flush()
                halfway.set()
                release.wait(30)
                return
            self.wfile.write(content)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with stack.client() as c:
            made = _create(
                c, _unique("refetch"), url=f"http://127.0.0.1:{server.server_address[1]}/x.bin"
            )
        assert halfway.wait(30), "the API never fetched the URL"
        stack.stop("api", signal.SIGKILL)
        stack.start("api")
        with stack.client() as c:
            ready = _settled(c, made["asset"]["id"])
            assert ready["status"] == "ready", ready["status_details"]
            assert c.get(f"/v1/assets/{made['asset']['id']}/download").content == content
        assert len(hits) == 2
    finally:
        release.set()
        server.shutdown()
        server.server_close()


async def test_an_asset_deleted_while_its_url_is_fetched_leaves_nothing_stored(
    stack: Stack, broker: Broker
) -> None:
    """Deleted while the API fetches its URL: the fetch ends, finds the asset gone, and the
    content it stored goes too (no other asset names it)."""
    content = os.urandom(256 * 1024)
    started, release = threading.Event(), threading.Event()

    class Held(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            started.set()
            release.wait(30)  # the body comes once the asset is deleted
            self.wfile.write(content)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Held)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async with stack.aclient() as c:
            url = f"http://127.0.0.1:{server.server_address[1]}/x.bin"
            made = (
                await c.post(
                    "/v1/assets",
                    json={"name": _unique("gone"), "asset_type": "file", "data": {}, "url": url},
                )
            ).json()
            assert await asyncio.to_thread(started.wait, 30)
            assert (await c.delete(f"/v1/assets/{made['asset']['id']}")).status_code == 200
            release.set()
            gone = f"asset {made['asset']['id']} was deleted while it was fetched"
            await asyncio.to_thread(
                wait_for, lambda: gone in stack.logs["api"].read_text(), 30, "the fetch's end"
            )
            assert not await has_content(broker, hashlib.sha256(content).hexdigest())
            got = (await c.get(f"/v1/assets/{made['asset']['id']}")).json()
            assert got["asset"]["status"] == "deleted"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
