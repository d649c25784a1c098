"""What the console reads, through HTTP alone: the live endpoints stream, the last hour's
points, recent jobs, snippets of given inputs, and the pages' headers."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.e2e


def first_lines(stack: Stack, path: str, count: int, timeout: float = 30.0) -> list[dict]:
    """The first ``count`` JSON lines of a stream."""
    out: list[dict] = []
    with (
        stack.client() as c,
        c.stream("GET", path, timeout=httpx.Timeout(timeout)) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        for line in resp.iter_lines():
            if line.strip():
                out.append(json.loads(line))
            if len(out) == count:
                break
    return out


def test_the_endpoints_stream_says_each_change(stack: Stack, name: str) -> None:
    stack.deploy(name, "probe", min_replicas=1, max_replicas=1)
    stack.wait_ready(name)
    [now] = first_lines(stack, "/v1/endpoints/stream", 1)
    mine = next(e for e in now["endpoints"] if e["name"] == name)
    assert mine["state"] == "running"
    assert mine["replicas"] == {"starting": 0, "ready": 1, "busy": 0, "failed": 0}
    assert mine["queued"] == 0 and mine["in_flight"] == 0
    assert (mine["min_replicas"], mine["max_replicas"], mine["public"]) == (1, 1, False)

    # A change shows as a new line: the endpoint disabled.
    with stack.client() as c:
        assert (
            c.patch(f"/v1/endpoint/{name}", json={"endpoint_state": "disabled"}).status_code == 200
        )
    lines = first_lines(stack, "/v1/endpoints/stream", 1)
    assert next(e for e in lines[0]["endpoints"] if e["name"] == name)["state"] == "disabled"


def test_the_stream_and_the_console_routes_need_an_admin_token(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as anon:
        for path in ("/v1/endpoints/stream", "/v1/requests", "/v1/endpoint/x/metrics"):
            resp = anon.get(path)
            assert resp.status_code == 401, path
            assert resp.json()["error"]["code"] == "unauthorized"


def test_metrics_count_requests_and_their_latency(stack: Stack, name: str) -> None:
    stack.deploy(name, "probe", min_replicas=1, max_replicas=1)
    with stack.client() as c:
        for _ in range(5):
            assert (
                c.post(f"/e/{name}/infer", json={"prompt": "p", "sleep": 0.05}).status_code == 200
            )
        assert c.post(f"/e/{name}/infer", json={"no": "prompt"}).status_code == 422

        def point() -> dict | None:
            points = c.get(f"/v1/endpoint/{name}/metrics").json()["points"]
            counted = [p for p in points if p["requests"]]
            return counted[-1] if counted and sum(p["requests"] for p in points) >= 6 else None

        found = wait_for(point, 30, "a point with the requests")
        points = c.get(f"/v1/endpoint/{name}/metrics").json()["points"]
        assert sum(p["requests"] for p in points) == 6
        assert max(p["p95_ms"] or 0 for p in points) >= 50  # the model sleeps 50 ms
        assert min(p["p50_ms"] for p in points if p["p50_ms"] is not None) < 1000
        assert found["replicas"]["ready"] + found["replicas"]["busy"] == 1
        assert found["queued"] == 0
        assert c.get("/v1/endpoint/no-such/metrics").status_code == 404
        later = c.get(f"/v1/endpoint/{name}/metrics", params={"since": time.time() + 60})
        assert later.json()["points"] == []


def test_recent_jobs_are_listed_newest_first(stack: Stack, name: str) -> None:
    stack.deploy(name, "probe", min_replicas=1, max_replicas=1)
    with stack.client() as c:
        ids = []
        for i in range(3):
            resp = c.post(
                f"/e/{name}/infer", json={"prompt": str(i)}, headers={"X-OctoAI-Async": "1"}
            )
            assert resp.status_code == 202
            ids.append(resp.json()["response_id"])

        def listed() -> list[dict] | None:
            jobs = c.get("/v1/requests", params={"endpoint": name}).json()
            done = [j for j in jobs if j["status"] == "completed"]
            return jobs if len(done) == 3 else None

        jobs = wait_for(listed, 30, "three completed jobs")
        assert [j["response_id"] for j in jobs] == ids[::-1]
        assert all(j["endpoint"] == name and j["timings"]["running_s"] is not None for j in jobs)
        assert (
            c.get("/v1/requests", params={"endpoint": name, "limit": 1}).json()[0]["response_id"]
            == ids[-1]
        )
        assert c.get("/v1/requests", params={"limit": 0}).status_code == 422


def test_snippets_of_a_given_input(stack: Stack, name: str) -> None:
    stack.deploy(name, "probe", min_replicas=0, max_replicas=1)
    with stack.client() as c:
        resp = c.post(
            f"/v1/endpoint/{name}/snippets",
            json={"route": "/infer", "input": {"prompt": 'it\'s "quoted"'}},
        )
        assert resp.status_code == 200
        body = resp.json()
        assert body["input_from"] == "request"
        assert body["url"].endswith(f"/e/{name}/infer")
        assert "it'\"'\"'s" in body["snippets"]["curl"]  # shell-quoted as pasted
        bad = c.post(f"/v1/endpoint/{name}/snippets", json={"route": "no-slash", "input": {}})
        assert bad.status_code == 422


def test_pages_are_served_with_a_strict_policy(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as anon:
        root = anon.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/console/"
        for path in ("/console/", "/console/endpoints/x", "/demo/some-endpoint"):
            page = anon.get(path)
            assert page.status_code == 200, path
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "require-trusted-types-for 'script'" in csp
            assert "frame-ancestors 'none'" in csp
            assert page.headers["cache-control"] == "no-store"
            assert (
                "<script" in page.text
                and "http://" not in page.text
                and "https://" not in page.text
            )
        assert anon.get("/demo/Not_A_Name").status_code == 404
        demo = anon.get("/demo/some-endpoint")
        assert 'data-endpoint="some-endpoint"' in demo.text
        js = anon.get("/console/static/app.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert js.headers["x-content-type-options"] == "nosniff"
        assert anon.get("/console/static/../../api/app.py").status_code == 404
        docs = anon.get("/docs")
        assert docs.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in docs.text
        assert "cdn" not in docs.text.lower()
        assert anon.get("/docs/static/swagger-ui-bundle.js").status_code == 200


def test_an_example_endpoint_can_be_edited_and_a_bad_edit_names_its_field(
    stack: Stack, name: str
) -> None:
    with stack.client() as c:
        made = c.post("/v1/endpoint", json={"name": name, "example": "echo"})
        assert made.status_code == 201, made.text
        edited = c.patch(f"/v1/endpoint/{name}", json={"max_replicas": 3, "visibility": "public"})
        assert edited.status_code == 200, edited.text
        assert edited.json()["max_replicas"] == 3 and edited.json()["example"] == "echo"

        bad = c.patch(f"/v1/endpoint/{name}", json={"health_check_path": "no-slash"})
        assert bad.status_code == 422
        error = bad.json()["error"]
        assert error["message"].startswith("health_check_path: ")
        assert "pydantic.dev" not in error["message"]
        assert error["details"][0]["loc"][-1] == "health_check_path"

        # Checked against the whole endpoint: an image beside its example.
        both = c.patch(f"/v1/endpoint/{name}", json={"image_url": "registry.test/m:1"})
        assert both.status_code == 422
        assert "not both" in both.json()["error"]["message"]
        assert "pydantic.dev" not in both.json()["error"]["message"]


def test_console_files_are_compressed_and_revalidated(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as anon:
        plain = anon.get("/console/static/app.js", headers={"accept-encoding": "identity"})
        packed = anon.get("/console/static/app.js", headers={"accept-encoding": "gzip"})
        assert plain.status_code == packed.status_code == 200
        assert packed.headers["content-encoding"] == "gzip"
        assert packed.content == plain.content  # httpx decodes it
        assert int(packed.headers["content-length"]) < len(plain.content) / 2
        tag = plain.headers["etag"]
        again = anon.get("/console/static/app.js", headers={"if-none-match": tag})
        assert again.status_code == 304 and again.content == b""
        assert anon.get("/console/static/nope.js").status_code == 404
        page = anon.get("/console/")
        for module in ("app.js", "api.js", "playground.js", "render.js"):
            assert f'rel="modulepreload" href="/console/static/{module}"' in page.text
