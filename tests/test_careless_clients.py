"""What careless or hostile callers send, end to end through a real stack: curl's
``Expect: 100-continue``, headers past NATS's limit, over-long idempotency keys and
non-finite deadlines. Each answer is the caller's real one or a clear 4xx."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.e2e

CURL = shutil.which("curl")


def _curl(stack: Stack, path: str, body: Path, *extra: str) -> tuple[int, dict[str, str], bytes]:
    """curl as a user runs it: its own defaults (``Expect: 100-continue`` over 1 MiB)."""
    assert CURL is not None
    started = time.monotonic()
    out = subprocess.run(
        [
            *(CURL, "-sS", "-v", "-i", "--max-time", "20"),
            *("-H", f"Authorization: Bearer {stack.token}"),
            *("-H", "Content-Type: application/json", "--data-binary", f"@{body}", *extra),
            f"{stack.url}{path}",
        ],
        capture_output=True,
        check=True,
    )
    # curl waits 1 s for a 100 Continue that never comes before it sends anyway: an
    # answer within that shows the API answered the expectation itself.
    assert time.monotonic() - started < 5, "curl hung"
    raw = out.stdout
    while raw.startswith(b"HTTP/1.1 100"):  # the interim answer, then the final one
        raw = raw.split(b"\r\n\r\n", 1)[1]
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert b"> Expect: 100-continue" in out.stderr  # curl's own default, not ours
    return status, headers, payload


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_curl_expect_100_continue_gets_the_real_answer(
    stack: Stack, name: str, tmp_path: Path
) -> None:
    stack.deploy(name, max_replicas=1)
    prompt = "x" * (2 * 1024 * 1024)
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"prompt": prompt}))
    # Sync: the replica's 200 with its body, not an interim 100 taken as the answer.
    status, headers, payload = _curl(stack, f"/e/{name}/infer", body)
    assert status == 200, payload[:300]
    assert json.loads(payload)["output"]["prompt"] == prompt
    assert headers["x-user-request-id"]
    # Async: the job completes with the real answer stored.
    status, _, payload = _curl(stack, f"/e/{name}/infer", body, "-H", "X-OctoAI-Async: 1")
    assert status == 202, payload
    job = json.loads(payload)
    with stack.client() as c:

        def done() -> dict[str, object] | None:
            state = c.get(job["poll_url"]).json()
            return state if state["status"] in ("completed", "failed") else None

        state = wait_for(done, 30, "the job to end")
        assert state["status"] == "completed", state
        stored = c.get(f"/v1/responses/{job['response_id']}")
        assert stored.status_code == 200
        assert stored.json()["output"]["prompt"] == prompt


def test_headers_past_the_brokers_limit_are_the_callers_error(stack: Stack, name: str) -> None:
    stack.deploy(name, max_replicas=1)
    with stack.client() as c:
        headers = {f"x-filler-{i}": "v" * 1000 for i in range(70)}  # about 70 KiB
        resp = c.post(f"/e/{name}/infer", json={"prompt": "hi"}, headers=headers)
        assert resp.status_code == 431, resp.text
        assert resp.json()["error"]["code"] == "request_headers_too_large"
        for mode in ({"X-OctoAI-Async": "1"}, {"Accept": "text/event-stream"}):
            resp = c.post(f"/e/{name}/infer", json={"prompt": "hi"}, headers={**headers, **mode})
            assert resp.status_code == 431, resp.text
        # Just under the limit still goes through.
        ok = {f"x-filler-{i}": "v" * 1000 for i in range(40)}
        assert c.post(f"/e/{name}/infer", json={"prompt": "hi"}, headers=ok).status_code == 200


def test_overlong_idempotency_keys_and_infinite_deadlines_are_refused(
    stack: Stack, name: str
) -> None:
    stack.deploy(name, max_replicas=1)
    with stack.client() as c:
        async_ = {"X-OctoAI-Async": "1"}
        long_key = "k" * 300
        resp = c.post(
            f"/e/{name}/infer",
            json={"prompt": "a"},
            headers={**async_, "Idempotency-Key": long_key},
        )
        assert resp.status_code == 422, resp.text
        assert "Idempotency-Key" in resp.json()["error"]["message"]
        # Keys that differ only past 255 characters are never one job.
        base = "k" * 255
        first = c.post(
            f"/e/{name}/infer", json={"prompt": "a"}, headers={**async_, "Idempotency-Key": base}
        )
        assert first.status_code == 202
        for value in ("inf", "Infinity", "nan", "-inf", "1e999"):
            resp = c.post(
                f"/e/{name}/infer", json={"prompt": "a"}, headers={"X-Berth-Deadline": value}
            )
            assert resp.status_code == 422, (value, resp.text)
        assert (
            c.post(
                f"/e/{name}/infer", json={"prompt": "a"}, headers={"X-Berth-Deadline": "30"}
            ).status_code
            == 200
        )


def test_httpx_with_expect_header(stack: Stack, name: str) -> None:
    """A client that sends Expect itself and the whole body at once (as httpx does)."""
    stack.deploy(name, max_replicas=1)
    with httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=20
    ) as c:
        resp = c.post(
            f"/e/{name}/infer", json={"prompt": "y" * 100_000}, headers={"Expect": "100-continue"}
        )
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["output"]["prompt"]) == 100_000
