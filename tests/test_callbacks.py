"""Callbacks end to end: signed per Standard Webhooks, retried while the receiver is down,
delivered after an API restart, logged, redeliverable, with rotatable secrets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.webhooks import WebhookVerificationError, verify
from tests.conftest import FAST, NatsServer, Stack, free_port, wait_for
from tests.test_async import ASYNC, job_status, poll

pytestmark = pytest.mark.e2e


class Receiver:
    """A callback receiver on 127.0.0.1: records each delivery, answers ``status``."""

    def __init__(self, port: int | None = None, status: int = 204):
        self.port = port or free_port()
        self.status = status
        self.got: list[tuple[dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def submit(c: httpx.Client, name: str, body: dict[str, Any], callback: str) -> dict[str, Any]:
    resp = c.post(f"/e/{name}/infer", json=body, headers={"X-Berth-Callback-URL": callback})
    assert resp.status_code == 202, resp.text
    return resp.json()  # type: ignore[no-any-return]


def callback_state(c: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    return c.get(job["poll_url"]).json()["callback"]  # type: ignore[no-any-return]


def test_a_callback_is_signed_and_carries_the_result(
    stack: Stack, name: str, receiver: Receiver
) -> None:
    stack.deploy(name)
    with stack.client() as c:
        secret = c.get("/v1/webhook-secret").json()["secret"]
        # A callback makes a job of the request (no X-OctoAI-Async needed); the query
        # parameter is Berth's and never reaches the replica.
        resp = c.post(f"/e/{name}/infer?callback_url={receiver.url}", json={"prompt": "hello"})
        assert resp.status_code == 202
        job = resp.json()
        wait_for(lambda: receiver.got, 30, "the callback")
        headers, body = receiver.got[0]
        verify(secret, headers, body)
        with pytest.raises(WebhookVerificationError):
            verify(secret, headers, body + b" ")
        event = httpx.Response(200, content=body).json()
        assert event["type"] == "request.completed"
        data = event["data"]
        assert data["response_id"] == job["response_id"] and data["status"] == "completed"
        assert data["response"]["status"] == 200
        assert data["response"]["body"]["output"]["prompt"] == "hello"
        assert headers["webhook-id"] == f"msg_{job['response_id']}"
        # The receiver records a delivery before it answers; the log follows the answer.
        wait_for(lambda: callback_state(c, job)["state"] == "delivered", 10, "the log")
        state = callback_state(c, job)
        assert state["attempts"] == 1
        assert state["log"][0]["status"] == 204 and state["delivered_at"]
        assert c.get(data["response_url"]).json()["output"]["prompt"] == "hello"

        # Redeliver: the same webhook-id, one more logged attempt.
        again = c.post(f"/v1/requests/{job['response_id']}/callback")
        assert again.status_code == 200
        wait_for(lambda: len(receiver.got) == 2, 30, "the redelivery")
        assert receiver.got[1][0]["webhook-id"] == headers["webhook-id"]
        wait_for(lambda: callback_state(c, job)["attempts"] == 2, 10, "the second attempt logged")
        plain = c.post(f"/e/{name}/infer", json={"prompt": "p"}, headers=ASYNC).json()
        no_callback = c.post(f"/v1/requests/{plain['response_id']}/callback")
        assert no_callback.status_code == 404


def test_a_down_receiver_gets_it_when_it_comes_back(stack: Stack, name: str) -> None:
    stack.deploy(name)
    receiver = Receiver()  # its port is chosen, nothing listens yet
    with stack.client() as c:
        job = submit(c, name, {"prompt": "patient"}, receiver.url)
        poll(c, job)  # the result does not wait for the callback
        wait_for(
            lambda: callback_state(c, job)["attempts"] >= 2, 30, "failed attempts to be logged"
        )
        state = callback_state(c, job)
        assert state["state"] == "pending" and state["log"][0]["error"]
        assert state["next_attempt_at"] > state["log"][-1]["at"]
        receiver.status = 503  # up, but failing: still retried
        receiver.start()
        try:
            wait_for(lambda: receiver.got, 30, "an attempt on the revived receiver")
            receiver.status = 200
            wait_for(lambda: callback_state(c, job)["state"] == "delivered", 60, "the delivery")
            statuses = [a["status"] for a in callback_state(c, job)["log"]]
            assert statuses[0] is None and 503 in statuses and statuses[-1] == 200
        finally:
            receiver.stop()


def test_a_receiver_that_says_gone_is_given_up(stack: Stack, name: str, receiver: Receiver) -> None:
    stack.deploy(name)
    receiver.status = 410
    with stack.client() as c:
        job = submit(c, name, {"prompt": "x"}, receiver.url)
        wait_for(lambda: callback_state(c, job)["state"] == "failed", 30, "giving up")
        assert callback_state(c, job)["attempts"] == 1


def test_secrets_rotate_and_an_endpoint_secret_wins(
    stack: Stack, name: str, receiver: Receiver
) -> None:
    stack.deploy(name)
    with stack.client() as c:
        old = c.get("/v1/webhook-secret").json()["secret"]
        rotated = c.post("/v1/webhook-secret/rotate").json()
        new = rotated["secret"]
        assert new != old and rotated["previous_valid_until"]
        submit(c, name, {"prompt": "r"}, receiver.url)
        wait_for(lambda: receiver.got, 30, "the callback")
        headers, body = receiver.got[0]
        assert len(headers["webhook-signature"].split()) == 2  # both, during the grace period
        verify(new, headers, body)
        verify(old, headers, body)

        assert c.get(f"/v1/endpoint/{name}/webhook-secret").json()["secret"] is None
        mine = c.post(f"/v1/endpoint/{name}/webhook-secret").json()["secret"]
        submit(c, name, {"prompt": "e"}, receiver.url)
        wait_for(lambda: len(receiver.got) == 2, 30, "the second callback")
        headers, body = receiver.got[1]
        verify(mine, headers, body)
        with pytest.raises(WebhookVerificationError):
            verify(new, headers, body)


def test_refused_callback_urls(stack: Stack, name: str) -> None:
    stack.deploy(name, visibility="public")
    with stack.client() as c:
        for url in (
            "ftp://127.0.0.1/x",
            "file:///etc/passwd",
            "http:///nohost",
            "http://user:pw@127.0.0.1/hook",
            "not a url",
            "http://127.0.0.1:99999/x",
            "http://127.0.0.1/" + "a" * 3000,
        ):
            resp = c.post(
                f"/e/{name}/infer", json={"prompt": "x"}, headers={"X-Berth-Callback-URL": url}
            )
            assert resp.status_code == 422, (url, resp.text)
            assert resp.json()["error"]["code"] == "invalid_request"
    with httpx.Client(base_url=stack.url, timeout=30) as anon:
        # Anonymous on a public endpoint: nobody's secret could sign it, unless the endpoint's.
        resp = anon.post(
            f"/e/{name}/infer",
            json={"prompt": "x"},
            headers={"X-Berth-Callback-URL": "http://127.0.0.1:9/hook"},
        )
        assert resp.status_code == 422 and "webhook secret" in resp.json()["error"]["message"]


def test_callback_survives_an_api_restart(
    own_nats: NatsServer, tmp_path: Path, receiver: Receiver
) -> None:
    stack = Stack(tmp_path / "berth", own_nats.url, env=FAST)
    try:
        stack.start()
        stack.deploy("hooked", min_replicas=1)
        wait_for(lambda: stack.replicas("hooked"), 30, "a replica")
        with stack.client() as c:
            job = submit(c, "hooked", {"prompt": "survives", "sleep": 1.5}, receiver.url)
            poll(c, job, "running")
        stack.stop("api")  # accepted, not completed: nobody to deliver the callback now
        wait_for(
            lambda: asyncio.run(job_status(own_nats.url, job["response_id"])) == "completed",
            30,
            "the job to complete with the API down",
            interval=0.2,
        )
        assert not receiver.got
        stack.start("api")
        wait_for(lambda: receiver.got, 30, "the callback after the API came back")
        event = httpx.Response(200, content=receiver.got[0][1]).json()
        assert event["data"]["status"] == "completed"
        assert event["data"]["response"]["body"]["output"]["prompt"] == "survives"
        with stack.client() as c:
            wait_for(lambda: callback_state(c, job)["state"] == "delivered", 10, "the log")
    finally:
        stack.close()


def test_callback_url_leaves_the_query_and_the_rest_stays_byte_for_byte() -> None:
    from api.dataplane.asks import take_callback as _take_callback

    assert _take_callback("a=b%20c&callback_url=http%3A%2F%2Fh%2Fhook&z=1+2") == (
        "a=b%20c&z=1+2",
        "http://h/hook",
    )
    assert _take_callback("a=1") == ("a=1", None)


def test_a_job_that_nobody_runs_expires_on_time_and_calls_back(
    stack: Stack, name: str, receiver: Receiver
) -> None:
    stack.deploy(name, max_replicas=0)  # no replica will ever pull it
    with stack.client() as c:
        resp = c.post(
            f"/e/{name}/infer",
            json={"prompt": "never"},
            headers={"X-Berth-Callback-URL": receiver.url, "X-Berth-Deadline": "0.5"},
        )
        assert resp.status_code == 202
        wait_for(lambda: receiver.got, 30, "the expiry's callback, with nobody polling")
        event = httpx.Response(200, content=receiver.got[0][1]).json()
        assert event["type"] == "request.expired"
        assert event["data"]["status"] == "expired" and "response" not in event["data"]
        # And it left the queue.
        assert c.get(f"/v1/endpoint/{name}").json()["queued"] == 0
