"""End to end through HTTP: deploy, call, queue, scale 0 → N → 0, and the failure paths.

Real nats-server, real API/scaler/agent processes, real replica processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from berth.local import LocalNats
from broker.connection import connect
from broker.streams import ensure_layout
from shared import names
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.e2e


def test_deploy_and_call_python_model(stack: Stack, name: str) -> None:
    created = stack.deploy(name, "echo", max_replicas=2, scale_to_zero=30)
    assert created["endpoint"] == f"{stack.url}/e/{name}"
    assert created["replicas"] == []
    with stack.client() as c:
        # No Content-Type, as `curl -d` sends it: still JSON to the model.
        resp = c.post(f"/e/{name}/infer", content=b'{"prompt": "hi", "n": 2}')
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"]["text"] == "hihi"
        assert resp.headers["x-user-request-id"]
        # An extra public method of the Service is an extra route.
        resp = c.post(f"/e/{name}/upper", json={"text": "shout"})
        assert resp.json()["output"] == {"text": "SHOUT"}
        # The model server's own OpenAPI document, through the endpoint URL.
        schema = c.get(f"/e/{name}/openapi.json").json()
        body = schema["paths"]["/infer"]["post"]["requestBody"]["content"]["application/json"][
            "schema"
        ]
        assert body["required"] == ["prompt"]
        assert body["properties"]["n"]["default"] == 1
    replicas = stack.replicas(name)
    assert [r["status"] for r in replicas] == ["running"]
    assert replicas[0]["endpoint_name"] == name and replicas[0]["age"] >= 0


def test_cold_start_request_is_held_not_failed(stack: Stack, name: str) -> None:
    stack.deploy(name, max_replicas=1, env_overrides={"PROBE_SETUP_DELAY": "1.0"})
    with stack.client() as c:
        started = time.monotonic()
        resp = c.post(f"/e/{name}/infer", json={"prompt": "first"})
        elapsed = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"]["prompt"] == "first"
    assert elapsed >= 1.0  # it waited through setup() instead of failing


def test_min_replicas_start_without_traffic(stack: Stack, name: str) -> None:
    stack.deploy(name, min_replicas=1, max_replicas=1)
    wait_for(
        lambda: [r for r in stack.replicas(name) if r["status"] == "running"],
        30,
        "a min_replicas replica",
    )


async def test_queue_is_fifo_beyond_free_slots(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    """With one replica busy, later requests wait in JetStream and are served in arrival order."""
    stack.deploy(name, max_replicas=1, min_replicas=1)
    wait_for(lambda: stack.replicas(name), 30, "the replica")
    order = shared_tmp / "order.log"
    async with stack.aclient() as c:
        first = asyncio.create_task(
            c.post(f"/e/{name}/infer", json={"prompt": "0", "sleep": 1.0, "log": str(order)})
        )
        await asyncio.to_thread(
            wait_for, lambda: order.exists() and order.read_text(), 30, "the first request to run"
        )
        rest = []
        for i in range(1, 5):
            rest.append(
                asyncio.create_task(
                    c.post(f"/e/{name}/infer", json={"prompt": str(i), "log": str(order)})
                )
            )
            await asyncio.sleep(0.05)  # stagger submissions so arrival order is defined
        responses = await asyncio.gather(first, *rest)
    assert [r.status_code for r in responses] == [200] * 5
    assert order.read_text().split() == ["0", "1", "2", "3", "4"]
    assert len({r.json()["output"]["pid"] for r in responses}) == 1  # one replica served all


async def test_scales_up_to_max_under_load_and_back_to_zero(stack: Stack, name: str) -> None:
    stack.deploy(name, max_replicas=2, scale_to_zero=2)
    async with stack.aclient() as c:
        calls = [
            c.post(f"/e/{name}/infer", json={"prompt": str(i), "sleep": 1.5}) for i in range(4)
        ]
        responses = await asyncio.gather(*calls)
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["output"]["pid"] for r in responses}) == 2  # both replicas took work
    wait_for(lambda: stack.replicas(name) == [], 30, "scale back to zero after scale_to_zero")
    # And the next request cold-starts again.
    with stack.client() as c:
        assert c.post(f"/e/{name}/infer", json={"prompt": "again"}).status_code == 200


def test_patch_max_replicas_and_list(stack: Stack, name: str) -> None:
    stack.deploy(name, max_replicas=1)
    with stack.client() as c:
        resp = c.patch(f"/v1/endpoint/{name}", json={"max_replicas": 3, "min_replicas": 1})
        assert resp.status_code == 200, resp.text
        assert (resp.json()["min_replicas"], resp.json()["max_replicas"]) == (1, 3)
        wait_for(lambda: stack.replicas(name), 30, "min_replicas=1 to take effect")
        names = [ep["name"] for ep in c.get("/v1/endpoints").json()]
        assert name in names
        assert c.delete(f"/v1/endpoint/{name}").json() == {"message": f"endpoint {name} deleted"}
        assert c.get(f"/v1/endpoint/{name}").status_code == 404
        assert c.post(f"/e/{name}/infer", json={"prompt": "x"}).status_code == 404


def test_setup_failure_ends_request_with_the_cause(stack: Stack, name: str) -> None:
    stack.deploy(name, "broken")
    with stack.client() as c:
        started = time.monotonic()
        resp = c.post(f"/e/{name}/infer", json={"prompt": "x"})
        assert time.monotonic() - started < 30
        assert resp.status_code == 503, resp.text
        error = resp.json()["error"]
        assert error["code"] == "replica_failed"
        assert "weights file model.bin not found" in error["message"]
        # While the endpoint backs off, the next caller is told at once, with the same cause.
        resp = c.post(f"/e/{name}/infer", json={"prompt": "y"})
        assert resp.status_code == 503 and "model.bin" in resp.json()["error"]["message"]
        assert int(resp.headers["retry-after"]) >= 1


def test_killed_replica_mid_request_is_redelivered(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    stack.deploy(name, max_replicas=1)
    calls = shared_tmp / "calls.log"
    with stack.client() as c:
        pid = c.post(f"/e/{name}/infer", json={"prompt": "warm"}).json()["output"]["pid"]

        async def slow_call() -> httpx.Response:
            async with stack.aclient() as ac:
                return await ac.post(
                    f"/e/{name}/infer", json={"prompt": "survivor", "sleep": 1.0, "log": str(calls)}
                )

        async def scenario() -> httpx.Response:
            task = asyncio.create_task(slow_call())
            await asyncio.to_thread(
                wait_for, lambda: calls.exists(), 30, "the request to reach the replica"
            )
            os.kill(pid, signal.SIGKILL)
            return await task

        resp = asyncio.run(scenario())
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"]["prompt"] == "survivor"
    assert resp.json()["output"]["pid"] != pid  # answered by the restarted replica
    assert calls.read_text().split() == ["survivor", "survivor"]  # delivered twice


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"min_replicas": 3, "max_replicas": 1}, "min_replicas must not exceed max_replicas"),
        ({"min_replicas": -1}, "min_replicas"),
        ({"scale_to_zero": -5}, "scale_to_zero"),
        ({"max_replicas": 1000}, "max_replicas"),
        ({"concurrency_per_replica": 0}, "concurrency_per_replica"),
        ({"name": "Not_A_DNS_Label"}, "DNS label"),
        ({"name": "-leading-dash"}, "DNS label"),
        ({"image_url": None, "model_id": None}, "one of image_url, model_id or example"),
        ({"health_check_path": "healthz"}, "must start with '/'"),
    ],
)
def test_invalid_config_is_422_with_json(
    stack: Stack, body: dict[str, object], fragment: str
) -> None:
    fields = {"name": "valid-name", "image_url": "example.com/echo:1", **body}
    with stack.client() as c:
        resp = c.post("/v1/endpoint", json=fields)
    assert resp.status_code == 422, resp.text
    assert fragment in resp.json()["error"]["message"]


def test_bad_requests_get_clear_4xx(stack: Stack, name: str) -> None:
    with stack.client() as c:
        assert c.post("/e/no-such-endpoint/infer", json={}).json()["error"]["code"] == "not_found"
        assert c.post("/e/no-such-endpoint/infer", json={}).status_code == 404
        assert c.get("/v1/endpoint/no-such-endpoint").status_code == 404
        resp = c.post(
            "/v1/endpoint", content=b'{"name": "x", ', headers={"content-type": "application/json"}
        )
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request"
        stack.deploy(name, "echo")
        assert c.post("/v1/endpoint", json={"name": name, "image_url": "x"}).status_code == 409
        # Malformed JSON for the model: the replica's own 422 comes back, not a 500.
        resp = c.post(f"/e/{name}/infer", content=b'{"prompt": ')
        assert resp.status_code == 422
        assert resp.json()["error"]["code"] == "invalid_input"
        resp = c.post(f"/e/{name}/infer", json={"n": 2})
        assert resp.status_code == 422 and resp.json()["error"]["details"][0]["loc"] == ["prompt"]
        # A model_id nobody uploaded.
        resp = c.post("/v1/endpoint", json={"name": name + "x", "model_id": "sha256:" + "0" * 64})
        assert resp.status_code == 422 and "never uploaded" in resp.json()["error"]["message"]
    # No token, wrong token: 401 on both planes; every response has a request id.
    with httpx.Client(base_url=stack.url) as anon:
        for resp in (
            anon.get("/v1/endpoints"),
            anon.post(f"/e/{name}/infer", json={"prompt": "x"}),
        ):
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["x-user-request-id"]
        wrong = anon.get("/v1/endpoints", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_creating_past_the_endpoint_limit_is_a_clear_409(
    stack: Stack, nats_server: LocalNats, name: str
) -> None:
    """At the requests stream's consumer limit, a new endpoint is refused with a 409 naming
    the limit, and is not left half made (a row without a queue)."""

    async def set_limit(full: bool) -> None:
        broker = await connect(nats_server.url, "test-limit")
        try:
            if full:
                info = await broker.js.stream_info(names.REQUESTS_STREAM)
                limit = max(1, info.state.consumer_count)
                await broker.js.update_stream(dataclasses.replace(info.config, max_consumers=limit))
            else:
                await ensure_layout(broker)
        finally:
            await broker.close()

    stack.deploy(name + "-a", "echo")  # at least one consumer, so the limit can be reached
    asyncio.run(set_limit(True))
    try:
        with stack.client() as c:
            resp = c.post("/v1/endpoint", json={"name": name, "image_url": "example.com/e:1"})
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"]["code"] == "too_many_endpoints"
            assert c.get(f"/v1/endpoint/{name}").status_code == 404
    finally:
        asyncio.run(set_limit(False))
        with stack.client() as c:
            c.delete(f"/v1/endpoint/{name}-a")
    assert stack.deploy(name, "echo")["name"] == name  # room again


def test_body_over_limit_is_413(stack: Stack, name: str) -> None:
    stack.deploy(name, "echo")
    with stack.client() as c:
        resp = c.post(f"/e/{name}/infer", content=b"x" * (11 * 1024 * 1024))
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large"


def test_public_endpoint_serves_inference_but_not_control_plane(stack: Stack, name: str) -> None:
    stack.deploy(name, "echo", visibility="public")
    with httpx.Client(base_url=stack.url, timeout=60) as anon:
        assert anon.post(f"/e/{name}/infer", json={"prompt": "open"}).status_code == 200
        assert anon.get(f"/v1/endpoint/{name}").status_code == 401


def test_any_method_path_and_query_are_forwarded(stack: Stack, name: str) -> None:
    stack.deploy(name, "echo")
    with stack.client() as c:
        resp = c.get(f"/e/{name}/healthcheck", params={"verbose": "1"})
        assert resp.status_code == 200 and resp.json() == {"status": "RUNNING"}
        assert c.get(f"/e/{name}/no-such-route").status_code == 404
        assert c.put(f"/e/{name}/infer", json={"prompt": "x"}).status_code == 405


def test_long_request_is_kept_alive_not_redelivered(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    """A request running longer than ack_wait (2 s in tests) is delivered once, thanks to in-progress acks."""
    stack.deploy(name, max_replicas=2)
    calls = shared_tmp / "calls.log"
    with stack.client() as c:
        resp = c.post(f"/e/{name}/infer", json={"prompt": "long", "sleep": 5.0, "log": str(calls)})
    assert resp.status_code == 200, resp.text
    assert calls.read_text().split() == ["long"]


def test_host_based_routing(stack: Stack, name: str) -> None:
    stack.deploy(name, "echo")
    with stack.client() as c:
        resp = c.post("/infer", json={"prompt": "by host"}, headers={"Host": f"{name}.berth.test"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"]["text"] == "by host"
        # Other hosts still reach the control plane.
        assert c.get("/v1/endpoints").status_code == 200


def test_config_change_replaces_replicas(stack: Stack, name: str) -> None:
    """PATCHing what a replica runs (here its environment) reaches callers: old replicas are drained."""
    stack.deploy(name, min_replicas=1, env_overrides={"VERSION": "1"})
    with stack.client() as c:
        assert c.post(f"/e/{name}/env", json={"name": "VERSION"}).json()["output"]["value"] == "1"
        resp = c.patch(f"/v1/endpoint/{name}", json={"env_overrides": {"VERSION": "2"}})
        assert resp.status_code == 200
        wait_for(
            lambda: (
                c.post(f"/e/{name}/env", json={"name": "VERSION"}).json()["output"]["value"] == "2"
            ),
            30,
            "the new config to serve",
        )
    wait_for(lambda: len(stack.replicas(name)) == 1, 30, "the outdated replica to go")


def test_delete_then_recreate_gets_a_fresh_replica(stack: Stack, name: str) -> None:
    stack.deploy(name, env_overrides={"VERSION": "old"})
    with stack.client() as c:
        assert c.post(f"/e/{name}/env", json={"name": "VERSION"}).json()["output"]["value"] == "old"
        assert c.delete(f"/v1/endpoint/{name}").status_code == 200
    stack.deploy(name, env_overrides={"VERSION": "new"})
    with stack.client() as c:
        assert c.post(f"/e/{name}/env", json={"name": "VERSION"}).json()["output"]["value"] == "new"


async def test_full_queue_is_429_with_retry_after(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    stack.deploy(name, min_replicas=1, max_replicas=1, max_queue_length=1)
    wait_for(lambda: stack.replicas(name), 30, "the replica")
    started = shared_tmp / "started.log"
    async with stack.aclient() as c:
        running = asyncio.create_task(
            c.post(f"/e/{name}/infer", json={"prompt": "a", "sleep": 1.5, "log": str(started)})
        )
        await asyncio.to_thread(wait_for, lambda: started.exists(), 30, "the first request to run")
        queued = asyncio.create_task(c.post(f"/e/{name}/infer", json={"prompt": "b"}))

        def one_queued() -> bool:
            with stack.client() as sc:
                return sc.get(f"/v1/endpoint/{name}").json()["queued"] == 1  # type: ignore[no-any-return]

        await asyncio.to_thread(wait_for, one_queued, 30, "the second request to be queued")
        rejected = await c.post(f"/e/{name}/infer", json={"prompt": "c"})
        assert rejected.status_code == 429
        assert rejected.json()["error"]["code"] == "queue_full"
        assert rejected.headers["retry-after"] == "1"
        assert [r.status_code for r in await asyncio.gather(running, queued)] == [200, 200]


def test_disabled_endpoint_rejects_and_stops_replicas(stack: Stack, name: str) -> None:
    stack.deploy(name, "echo", min_replicas=1)
    wait_for(lambda: stack.replicas(name), 30, "the replica")
    with stack.client() as c:
        assert (
            c.patch(f"/v1/endpoint/{name}", json={"endpoint_state": "disabled"}).status_code == 200
        )
        resp = c.post(f"/e/{name}/infer", json={"prompt": "x"})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "endpoint_disabled"
        wait_for(
            lambda: stack.replicas(name) == [], 30, "the replicas of a disabled endpoint to stop"
        )
        assert c.patch(f"/v1/endpoint/{name}", json={"endpoint_state": "active"}).status_code == 200
        assert (
            c.post(f"/e/{name}/infer", json={"prompt": "back"}).json()["output"]["text"] == "back"
        )


def test_large_bodies_both_ways_and_oversized_response(stack: Stack, name: str) -> None:
    stack.deploy(name, "echo")
    big = "x" * (2 * 1024 * 1024)
    with stack.client() as c:
        resp = c.post(f"/e/{name}/infer", json={"prompt": big})
        assert resp.status_code == 200
        assert len(resp.json()["output"]["text"]) == len(big)
        # 20 MB of output: over the 16 MiB message limit, it comes through the object store.
        resp = c.post(f"/e/{name}/infer", json={"prompt": "y" * 1024, "n": 20 * 1024})
        assert resp.status_code == 200
        assert len(resp.json()["output"]["text"]) == 20 * 1024 * 1024


def test_events_tell_why(stack: Stack, name: str) -> None:
    stack.deploy(name, "echo", scale_to_zero=1)
    with stack.client() as c:
        assert c.post(f"/e/{name}/infer", json={"prompt": "x"}).status_code == 200
        wait_for(lambda: stack.replicas(name) == [], 30, "scale to zero")

        def types() -> list[str]:
            return [e["event"]["type"] for e in c.get(f"/v1/events/{name}").json()]

        wait_for(lambda: "replica_stopped" in types(), 10, "the stop event")
        events = c.get(f"/v1/events/{name}").json()
        kinds = [e["event"]["type"] for e in events]
        assert kinds[0] == "endpoint_created"
        assert (
            kinds.index("scale_decision")
            < kinds.index("replica_ready")
            < kinds.index("replica_stopped")
        )
        decisions = [
            e["event"]["details"]["reason"]
            for e in events
            if e["event"]["type"] == "scale_decision"
        ]
        assert "scale up 0 → 1" in decisions[0] and "scale_to_zero" in decisions[-1]
        ready = next(e for e in events if e["event"]["type"] == "replica_ready")
        assert ready["replica_id"] and ready["event"]["details"]["startup_s"] > 0
        assert ready["timestamp"].endswith("Z") and ready["event"]["endpoint"] == name
        # max_lines keeps the newest; begin_time filters.
        assert [
            e["event"]["type"] for e in c.get(f"/v1/events/{name}", params={"max_lines": 1}).json()
        ] == ["replica_stopped"]
        later = c.get(f"/v1/events/{name}", params={"begin_time": "2999-01-01T00:00:00Z"}).json()
        assert later == []
        assert c.get("/v1/events/no-such-endpoint").status_code == 404
        assert c.get(f"/v1/events/{name}", params={"max_lines": 5000}).status_code == 422


def test_stopping_a_starting_replica_is_not_a_failure(stack: Stack, name: str) -> None:
    """Deleting an endpoint whose replica is still starting must not put its name in start backoff."""
    stack.deploy(name, min_replicas=1, env_overrides={"PROBE_SETUP_DELAY": "3"})
    wait_for(
        lambda: [r for r in stack.replicas(name) if r["status"] == "pending"],
        30,
        "a starting replica",
    )
    with stack.client() as c:
        assert c.delete(f"/v1/endpoint/{name}").status_code == 200
    stack.deploy(name)
    with stack.client() as c:
        resp = c.post(f"/e/{name}/infer", json={"prompt": "fresh"})
    assert resp.status_code == 200, resp.text


def test_fixing_a_broken_model_retries_at_once(stack: Stack, name: str) -> None:
    stack.deploy(name, env_overrides={"PROBE_FAIL_SETUP": "bad config"})
    with stack.client() as c:
        assert c.post(f"/e/{name}/infer", json={"prompt": "x"}).status_code == 503
        assert c.patch(f"/v1/endpoint/{name}", json={"env_overrides": {}}).status_code == 200
        resp = c.post(f"/e/{name}/infer", json={"prompt": "fixed"})  # no waiting out the backoff
    assert resp.status_code == 200, resp.text


def test_container_endpoint_without_a_container_runtime_fails_clearly(
    stack: Stack, name: str
) -> None:
    """No agent has a Docker engine (this stack's run with BERTH_DOCKER_HOST=none): an image
    endpoint is accepted, and its requests are answered at once with why they cannot run."""
    with stack.client() as c:
        created = c.post(
            "/v1/endpoint", json={"name": name, "image_url": "registry.local/echo:1", "port": 8080}
        )
        assert created.status_code == 201, created.text
        resp = c.post(f"/e/{name}/infer", json={"prompt": "x"})
    assert resp.status_code == 503
    assert "no agent can run container images" in resp.json()["error"]["message"]
