"""Jobs beyond OctoAI: cancellation, deadlines, idempotency, wait budgets, queue position,
what a queued job waits for, and a sync caller that hangs up. End to end on real NATS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack, wait_for
from tests.test_async import ASYNC, poll, submit

pytestmark = pytest.mark.e2e


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def busy(c: httpx.Client, name: str, seconds: float, log: Path) -> dict[str, Any]:
    """Occupy the endpoint's one replica for ``seconds`` (a job seen running)."""
    job = submit(c, name, {"prompt": "busy", "sleep": seconds, "log": str(log)})
    poll(c, job, "running")
    return job


def test_cancel_a_queued_and_a_running_job(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    log = shared_tmp / "ran.log"
    stack.deploy(name, max_replicas=1)
    with stack.client() as c:
        running = busy(c, name, 2.0, log)
        queued = submit(c, name, {"prompt": "queued", "log": str(log)})
        assert c.get(queued["poll_url"]).json()["status"] == "pending"

        gone = c.delete(queued["poll_url"])
        assert gone.status_code == 200 and gone.json()["status"] == "cancelled"
        assert c.delete(queued["poll_url"]).status_code == 200  # twice: still cancelled

        stopped = c.delete(running["poll_url"])
        assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
        assert stopped.json()["reason"] == "cancelled by the caller"

        after = submit(c, name, {"prompt": "after", "log": str(log)})
        poll(c, after, timeout=30)
        # The running job reached the replica, its answer was dropped; the queued one never ran.
        assert lines(log) == ["busy", "after"]
        for job in (running, queued):
            state = c.get(job["poll_url"]).json()
            assert state["status"] == "cancelled" and "response_url" not in state
            resp = c.get(f"/v1/responses/{job['response_id']}")
            assert resp.status_code == 410 and resp.json()["error"]["code"] == "gone"
        ended = c.delete(after["poll_url"])
        assert ended.status_code == 409 and ended.json()["error"]["code"] == "conflict"


def test_deadlines_expire_queued_work(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    log = shared_tmp / "ran.log"
    stack.deploy(name, max_replicas=1)
    with stack.client() as c:
        busy(c, name, 1.5, log)
        late = c.post(
            f"/e/{name}/infer",
            json={"prompt": "late", "log": str(log)},
            headers={**ASYNC, "X-Berth-Deadline": "0.3"},
        ).json()
        # Sync too: a deadline shorter than the queue gives a 504, not a long wait.
        sync = c.post(
            f"/e/{name}/infer",
            json={"prompt": "sync-late", "log": str(log)},
            headers={"X-Berth-Deadline": "0.3"},
        )
        assert sync.status_code == 504 and sync.json()["error"]["code"] == "timeout"
        expired = poll(c, late, "expired")
        assert "deadline" in expired["reason"] and "response_url" not in expired
        after = submit(c, name, {"prompt": "after", "log": str(log)})
        poll(c, after, timeout=30)
        assert lines(log) == ["busy", "after"]  # neither late request reached the replica

        for bad in ("soon", "-1", "2020-01-01T00:00:00Z", "2030-01-01T00:00:00"):
            resp = c.post(
                f"/e/{name}/infer", json={"prompt": "x"}, headers={"X-Berth-Deadline": bad}
            )
            assert resp.status_code == 422, (bad, resp.text)
            assert resp.json()["error"]["code"] == "invalid_request"


def test_idempotency_key_returns_the_same_job(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    log = shared_tmp / "ran.log"
    stack.deploy(name)
    body = {"prompt": "once", "log": str(log)}
    key = {**ASYNC, "Idempotency-Key": "order-42"}
    with stack.client() as c:
        first = c.post(f"/e/{name}/infer", json=body, headers=key)
        again = c.post(f"/e/{name}/infer", json=body, headers=key)
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json()
        poll(c, first.json())
        # After completion too: still the same job, still one run.
        assert c.post(f"/e/{name}/infer", json=body, headers=key).json() == first.json()
        other = c.post(f"/e/{name}/infer", json={"prompt": "different"}, headers=key)
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        fresh = c.post(f"/e/{name}/infer", json=body, headers={**key, "Idempotency-Key": "43"})
        assert fresh.json()["response_id"] != first.json()["response_id"]
        poll(c, fresh.json())
        # Keys are per caller: another token's same key is another job.
        token = c.post("/v1/tokens", json={"name": "idem", "scopes": ["inference"]}).json()
    with httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {token['token']}"}, timeout=30
    ) as other_caller:
        theirs = other_caller.post(f"/e/{name}/infer", json=body, headers=key).json()
        assert theirs["response_id"] != first.json()["response_id"]
        poll(other_caller, theirs)
    assert lines(log) == ["once", "once", "once"]


def test_prefer_wait_answers_inline_or_becomes_a_job(stack: Stack, name: str) -> None:
    stack.deploy(name, min_replicas=1)
    wait_for(lambda: stack.replicas(name), 30, "a ready replica")
    with stack.client() as c:
        quick = c.post(f"/e/{name}/infer", json={"prompt": "quick"}, headers={"Prefer": "wait=20"})
        assert quick.status_code == 200 and quick.json()["output"]["prompt"] == "quick"
        response_id = quick.headers["x-berth-response-id"]
        assert c.get(f"/v1/requests/{response_id}").json()["status"] == "completed"

        slow = c.post(
            f"/e/{name}/infer",
            json={"prompt": "slow", "sleep": 1.0},
            headers={"Prefer": "wait=0.2"},
        )
        assert slow.status_code == 202 and slow.headers["location"] == slow.json()["poll_url"]
        done = poll(c, slow.json())
        assert c.get(done["response_url"]).json()["output"]["prompt"] == "slow"

        as_job = c.post(
            f"/e/{name}/infer", json={"prompt": "a"}, headers={"Prefer": "respond-async"}
        )
        assert as_job.status_code == 202
        poll(c, as_job.json())
        bad = c.post(f"/e/{name}/infer", json={"prompt": "a"}, headers={"Prefer": "wait=soon"})
        assert bad.status_code == 422

        # The endpoint's own budget: every sync request slower than it becomes a job.
        assert c.patch(f"/v1/endpoint/{name}", json={"sync_wait": 0.2}).status_code == 200
        assert c.get(f"/v1/endpoint/{name}").json()["sync_wait"] == 0.2

        def slow_call() -> httpx.Response | None:
            resp = c.post(f"/e/{name}/infer", json={"prompt": "plain", "sleep": 1.0})
            return resp if resp.status_code == 202 else None

        plain = wait_for(slow_call, 30, "the endpoint's sync_wait to apply")
        assert poll(c, plain.json())["status"] == "completed"
        fast = c.post(f"/e/{name}/infer", json={"prompt": "fast"})
        assert fast.status_code == 200 and fast.headers["x-berth-response-id"]


def test_a_sync_caller_that_hangs_up_cancels_its_queued_request(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    log = shared_tmp / "ran.log"
    stack.deploy(name, max_replicas=1)
    with stack.client() as c:
        busy(c, name, 1.5, log)
        with pytest.raises(httpx.ReadTimeout):
            c.post(
                f"/e/{name}/infer",
                json={"prompt": "impatient", "log": str(log)},
                timeout=httpx.Timeout(30, read=0.3),
            )
        after = c.post(f"/e/{name}/infer", json={"prompt": "after", "log": str(log)})
        assert after.status_code == 200
    assert lines(log) == ["busy", "after"]


def test_queued_jobs_show_position_wait_and_timings(
    stack: Stack, name: str, tmp_path: Path, shared_tmp: Path
) -> None:
    log = shared_tmp / "ran.log"
    stack.deploy(name, max_replicas=1)
    with stack.client() as c:
        # A request finished first, so the replica knows its service time.
        warm = submit(c, name, {"prompt": "warm", "sleep": 0.3})
        poll(c, warm)
        first = busy(c, name, 1.5, log)
        queued = [submit(c, name, {"prompt": f"q{i}"}) for i in range(3)]
        state = c.get(queued[2]["poll_url"]).json()
        assert state["status"] == "pending"
        assert state["queue_position"] == 2
        assert state["timings"]["queued_s"] >= 0 and state["timings"]["running_s"] is None
        assert "waiting_for" not in state  # a replica is ready: it only waits its turn
        estimate = wait_for(
            lambda: c.get(queued[2]["poll_url"]).json().get("estimated_wait_s"),
            10,
            "a wait estimate",
        )
        assert 0 < estimate < 60
        done = poll(c, queued[2], timeout=30)
        timings = done["timings"]
        assert timings["queued_s"] >= 1.0 and timings["running_s"] >= 0
        assert timings["cold_start_s"] == 0
        assert poll(c, first)["timings"]["running_s"] >= 1.5


def test_a_job_says_what_it_waits_for(stack: Stack, name: str) -> None:
    stack.deploy(name, env_overrides={"PROBE_SETUP_DELAY": "2"})
    with stack.client() as c:
        job = submit(c, name, {"prompt": "cold"})
        waiting = wait_for(
            lambda: c.get(job["poll_url"]).json().get("waiting_for"), 10, "a reason to wait"
        )
        assert waiting["reason"] in ("scheduling", "cold_start")
        starting = wait_for(
            lambda: (
                c.get(job["poll_url"]).json().get("waiting_for", {}).get("reason") == "cold_start"
            ),
            10,
            "the cold start to show",
        )
        assert starting
        done = poll(c, job, timeout=30)
        assert done["timings"]["cold_start_s"] >= 1.5  # setup slept 2 s after the job arrived


def test_a_job_behind_a_crash_loop_says_so(stack: Stack, name: str) -> None:
    stack.deploy(name, min_replicas=1, max_replicas=1)
    wait_for(lambda: stack.replicas(name), 30, "a ready replica")
    with stack.client() as c:
        # Every attempt at this request kills the replica, which restarts with backoff.
        crasher = c.post(f"/e/{name}/crash", json={}, headers=ASYNC).json()
        job = submit(c, name, {"prompt": "behind"})
        waiting = wait_for(
            lambda: (
                (c.get(job["poll_url"]).json().get("waiting_for") or {}).get("reason")
                == "crash_loop"
                and c.get(job["poll_url"]).json()["waiting_for"]
            ),
            30,
            "the crash loop to show",
        )
        assert "exit" in waiting["message"] or "connection" in waiting["message"]
        for j in (crasher, job):
            c.delete(j["poll_url"])


def test_job_ownership(stack: Stack, name: str) -> None:
    """A job is its submitter's: another token allowed on the same endpoint gets 404 for
    reading, cancelling and re-sending it (never 403, which would confirm the id); admin
    tokens see all; an anonymous job on a public endpoint is reachable by its id alone."""
    from tests.test_access import call, make_token

    public = name[:-5] + "-pub"
    stack.deploy(name, max_replicas=1)
    stack.deploy(public, visibility="public", max_replicas=1)
    try:
        alice = make_token(stack, scopes=["inference"], endpoints=[name, public])["token"]
        mallory = make_token(stack, scopes=["inference"], endpoints=[name, public])["token"]
        made = httpx.post(
            f"{stack.url}/e/{name}/infer",
            json={"prompt": "a", "sleep": 1.0},
            headers={**ASYNC, "Authorization": f"Bearer {alice}"},
        )
        assert made.status_code == 202, made.text
        rid = made.json()["response_id"]
        for method, path in (
            ("GET", f"/v1/requests/{rid}"),
            ("GET", f"/v1/responses/{rid}"),
            ("POST", f"/v1/requests/{rid}/callback"),
            ("DELETE", f"/v1/requests/{rid}"),
        ):
            resp = call(stack, method, path, mallory)
            assert resp.status_code == 404, (method, path, resp.text)
            assert resp.json()["error"]["code"] == "not_found"
        assert call(stack, "GET", f"/v1/requests/{rid}", None).status_code == 401
        assert call(stack, "GET", f"/v1/requests/{rid}", alice).status_code == 200
        assert call(stack, "GET", f"/v1/requests/{rid}", stack.token).status_code == 200
        # Still running: mallory's cancel above did nothing.
        assert call(stack, "GET", f"/v1/requests/{rid}", alice).json()["status"] != "cancelled"

        # On a public endpoint: a job made with a token is still that token's ...
        mine = httpx.post(
            f"{stack.url}/e/{public}/infer",
            json={"prompt": "p"},
            headers={**ASYNC, "Authorization": f"Bearer {alice}"},
        ).json()["response_id"]
        assert call(stack, "GET", f"/v1/requests/{mine}", None).status_code == 401
        assert call(stack, "GET", f"/v1/requests/{mine}", mallory).status_code == 404
        assert call(stack, "GET", f"/v1/requests/{mine}", alice).status_code == 200
        # ... and an anonymous one is reachable by its id alone.
        anon = httpx.post(f"{stack.url}/e/{public}/infer", json={"prompt": "p"}, headers=ASYNC)
        assert anon.status_code == 202
        anon_id = anon.json()["response_id"]
        assert call(stack, "GET", f"/v1/requests/{anon_id}", None).status_code == 200
        assert call(stack, "GET", f"/v1/requests/{anon_id}", mallory).status_code == 200
        assert call(stack, "DELETE", f"/v1/requests/{rid}", alice).status_code == 200
    finally:
        with stack.client() as c:
            c.delete(f"/v1/endpoint/{public}")
