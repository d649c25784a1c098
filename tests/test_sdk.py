"""The Python SDK against a real Berth: inference in every mode, jobs to their end, typed
errors with the request id, endpoints from a model folder, a callback verified."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth import (
    AsyncClient,
    Client,
    Conflict,
    Endpoint,
    JobFailed,
    JobStatus,
    NotFound,
    RateLimited,
    Unprocessable,
    WebhookVerificationError,
    from_media,
    to_media,
    verify_webhook,
)
from berth.sdk import _core
from tests.conftest import MODELS, Stack, wait_for
from tests.test_callbacks import Receiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def berth(stack: Stack) -> Iterator[Client]:
    with Client(stack.url, stack.token, timeout=60) as client:
        yield client


@pytest.fixture
def probe(stack: Stack, name: str) -> str:
    stack.deploy(name, "probe", min_replicas=1, max_replicas=1)
    stack.wait_ready(name)
    return name


def test_sync_inference_and_health(berth: Client, probe: str, stack: Stack) -> None:
    answer = berth.infer(probe, {"prompt": "hi"})
    assert answer["output"]["prompt"] == "hi" and answer["output"]["replica"]
    by_url = berth.infer(f"{stack.url}/e/{probe}", {"prompt": "by url"})
    assert by_url["output"]["prompt"] == "by url"
    assert berth.health_check(probe) == 200


def test_errors_are_typed_and_carry_the_request_id(berth: Client, probe: str) -> None:
    with pytest.raises(NotFound) as missing:
        berth.infer("no-such-endpoint", {"prompt": "x"})
    assert missing.value.status == 404 and missing.value.request_id
    assert missing.value.code  # Berth's own error code
    with pytest.raises(Unprocessable) as bad:
        berth.infer(probe, {"prompt": ["not", "a", "string"]})
    assert bad.value.status == 422 and bad.value.request_id and bad.value.details
    with pytest.raises(NotFound):
        berth.get_job("0f0e0d0c-0000-4000-8000-000000000000")


def test_an_async_job_runs_to_its_end_and_a_queued_one_is_cancelled(
    berth: Client, probe: str
) -> None:
    slow = berth.infer_async(probe, {"prompt": "slow", "sleep": 1.5})
    queued = berth.infer_async(probe, {"prompt": "behind"})  # one replica, one slot: it waits
    state = queued.status()
    assert state.status in (JobStatus.PENDING, JobStatus.RUNNING)
    cancelled = queued.cancel()
    assert cancelled.status is JobStatus.CANCELLED
    with pytest.raises(JobFailed) as failed:
        queued.result(timeout=10)
    assert failed.value.job.status is JobStatus.CANCELLED

    done = slow.wait(timeout=30)
    assert done.status is JobStatus.COMPLETED and done.finished_at
    response = slow.result()
    assert response.status == 200 and response.json()["output"]["prompt"] == "slow"
    assert any(j.response_id == slow.response_id for j in berth.list_jobs(probe))


def test_a_retried_submission_makes_one_job(berth: Client, probe: str) -> None:
    first = berth.infer_async(probe, {"prompt": "once"}, idempotency_key="k-" + probe)
    again = berth.infer_async(probe, {"prompt": "once"}, idempotency_key="k-" + probe)
    assert first.response_id == again.response_id


def test_a_stream_arrives_chunk_by_chunk(berth: Client, probe: str) -> None:
    got = list(berth.stream(probe, {"prompt": "s", "n": 3}, path="/chunks"))
    assert [c["text"] for c in got] == ["s 0", "s 1", "s 2"]


def test_an_endpoint_from_a_model_folder_holds_its_cold_start(berth: Client, name: str) -> None:
    sent: list[tuple[int, int]] = []
    endpoint = berth.create_endpoint(
        name,
        model_folder=MODELS / "probe",
        min_replicas=0,
        max_replicas=1,
        progress=lambda done, total: sent.append((done, total)),
    )
    assert isinstance(endpoint, Endpoint) and endpoint.name == name and not endpoint.ready
    assert sent and sent[-1][0] == sent[-1][1]  # the upload reported its progress to the end
    answer = berth.infer(name, {"prompt": "cold"})  # waits through the replica's start
    assert answer["output"]["prompt"] == "cold"
    assert berth.wait_until_ready(name, timeout=30).ready
    updated = berth.update_endpoint(name, max_replicas=2, description="via the SDK")
    assert (updated.max_replicas, updated.description) == (2, "via the SDK")
    assert name in {e.name for e in berth.list_endpoints()}
    assert any(e.event.get("type") for e in berth.events(name))
    followed = berth.follow_events(name, since="2000-01-01T00:00:00Z")
    assert next(followed)["event"]["type"] == "endpoint_created"
    followed.close()
    berth.delete_endpoint(name)
    with pytest.raises(NotFound):
        berth.get_endpoint(name)


def test_a_callback_is_verified_with_the_sdks_helper(berth: Client, probe: str) -> None:
    receiver = Receiver().start()
    try:
        job = berth.infer_async(probe, {"prompt": "call me"}, callback_url=receiver.url)
        job.wait(timeout=30)
        wait_for(lambda: receiver.got, 30, "the callback")
        headers, body = receiver.got[0]
        secret = berth.webhook_secret()
        verify_webhook(headers, body, secret)  # raises if it was not Berth's
        assert job.response_id.encode() in body
        with pytest.raises(WebhookVerificationError):
            verify_webhook(headers, body + b" ", secret)
    finally:
        receiver.stop()


def test_secrets_and_tokens(berth: Client, name: str) -> None:
    key = name.replace("-", "_").upper()
    berth.set_secret(key, "one")
    berth.set_secret(key, "two")  # changed, not created twice
    assert key in berth.list_secrets()
    berth.delete_secret(key)
    assert key not in berth.list_secrets()
    token = berth.create_token(name, ["inference"], endpoints=[name])
    assert token.token and token.scopes == ["inference"]
    assert token.id in {t.id for t in berth.list_tokens()}
    berth.delete_token(token.id)


def test_the_async_client(stack: Stack, probe: str) -> None:
    async def run() -> None:
        async with AsyncClient(stack.url, stack.token, timeout=60) as berth:
            answer, job = await asyncio.gather(
                berth.infer(probe, {"prompt": "a"}),
                berth.infer_async(probe, {"prompt": "b"}),
            )
            assert answer["output"]["prompt"] == "a"
            assert (await job.wait(timeout=30)).status is JobStatus.COMPLETED
            assert (await job.result()).json()["output"]["prompt"] == "b"
            chunks = [c async for c in berth.stream(probe, {"prompt": "c", "n": 2}, path="/chunks")]
            assert [c["i"] for c in chunks] == [0, 1]
            with pytest.raises(NotFound) as missing:
                await berth.get_endpoint("no-such-endpoint")
            assert missing.value.request_id
            assert (await berth.get_endpoint(probe)).ready
            async with asyncio.timeout(30):  # history first, then live: its creation is there
                async for item in berth.follow_events(probe, since="2000-01-01T00:00:00Z"):
                    assert item["event"]["type"]
                    break

    asyncio.run(run())


def test_media_round_trip(tmp_path: Any) -> None:
    raw = bytes(range(256))
    (tmp_path / "f.bin").write_bytes(raw)
    assert from_media(to_media(raw)) == raw == from_media(to_media(tmp_path / "f.bin"))
    with pytest.raises(ValueError, match="URL"):
        from_media({"data": {"url": "https://example.test/x.png"}})


def _scripted(answers: list[httpx.Response | Exception]) -> tuple[Client, list[httpx.Request]]:
    """A client whose transport answers from a script (the retry rules, without a server)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    http = httpx.Client(transport=httpx.MockTransport(handle))
    return Client("http://berth.test", "t", retries=3, http=http), seen


def test_only_safe_calls_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_core, "BACKOFF_BASE", 0.001)
    busy = httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"code": "queue_full"}})
    ok = httpx.Response(200, json={"ok": True})
    # A 429 refused the request: any call is sent again.
    client, seen = _scripted([busy, busy, ok])
    assert client.infer("e", {}) == {"ok": True} and len(seen) == 3
    # A connection lost mid-call: a sync inference may have run, so it is not sent again...
    client, seen = _scripted([httpx.ReadError("lost"), ok])
    with pytest.raises(Exception, match="ReadError"):
        client.infer("e", {})
    assert len(seen) == 1
    # ...but a job submission carries an idempotency key, the same on every try.
    accepted = httpx.Response(202, json={"response_id": "r", "poll_url": "http://x"})
    client, seen = _scripted([httpx.ReadError("lost"), accepted])
    assert client.infer_async("e", {}).response_id == "r"
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 2 and len(keys) == 1
    # A 429 that keeps coming ends, typed, after the retries.
    client, seen = _scripted([busy] * 4)
    started = time.monotonic()
    with pytest.raises(RateLimited):
        client.infer("e", {})
    assert len(seen) == 4 and time.monotonic() - started < 5


def test_a_misspelt_setting_fails_before_anything_is_sent() -> None:
    from pydantic import ValidationError

    client, seen = _scripted([])
    with pytest.raises(ValidationError, match="min_replica"):
        client.create_endpoint("e", example="echo", min_replica=1)
    with pytest.raises(ValidationError, match="max_replicas"):
        client.update_endpoint("e", max_replicas=-1)
    assert seen == []


def test_assets_upload_list_mount_and_delete(
    berth: Client, stack: Stack, name: str, tmp_path: Path
) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    seen: list[tuple[int, int]] = []
    asset = berth.upload_asset(
        weights, f"sdk-{name[:40]}", data={"file_format": "unknown"},
        progress=lambda sent, total: seen.append((sent, total)),
    )  # fmt: skip
    assert asset.status == "ready" and asset.size_bytes == weights.stat().st_size
    assert asset.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert seen and seen[-1] == (asset.size_bytes, asset.size_bytes)
    assert [a.id for a in berth.list_assets(name=asset.name)] == [asset.id]
    assert berth.get_asset(asset.name).id == asset.id
    with pytest.raises(Conflict):  # the name is taken
        berth.upload_asset(weights, asset.name)

    ep = berth.create_endpoint(
        name, model_folder=MODELS / "assets", min_replicas=1, max_replicas=1, assets=[asset.name]
    )
    assert ep.model_extra and ep.model_extra["assets"] == [asset.id]
    berth.wait_until_ready(name, timeout=90)
    out = berth.infer(name, {"name": asset.name})["output"]
    assert out["sha256"] == asset.sha256
    with pytest.raises(Conflict):  # in use
        berth.delete_asset(asset.id)
    berth.update_endpoint(name, assets=[])
    berth.delete_asset(asset.id)
    with pytest.raises(NotFound):
        berth.get_asset(asset.id + "x")

    async def the_async_client() -> None:
        async with AsyncClient(stack.url, stack.token) as aio:
            made = await aio.upload_asset(weights, f"sdk-async-{name[:30]}")
            assert made.status == "ready" and made.sha256 == asset.sha256
            assert (await aio.get_asset(made.id)).name == made.name
            await aio.delete_asset(made.id)

    asyncio.run(the_async_client())


def test_a_tune_runs_to_its_end_and_another_is_cancelled(
    berth: Client, stack: Stack, name: str, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"a": "A ship in the harbour", "b": "A boat at the dock", "label": 1}\n'
        '{"a": "A ship in the harbour", "b": "Two eggs and flour", "label": 0}\n'
    )
    asset = berth.upload_asset(pairs, f"pairs-{name[:40]}", data={"file_format": "jsonl"})
    tune = berth.create_tune(
        f"sdk-{name[:40]}", [asset.id], steps=50, trigger_words=["x"], captions={asset.id: "p"}
    )
    assert tune.status == "pending" and tune.endpoint
    assert tune.details["files"] == [{"file_id": asset.id, "caption": "p"}]
    assert tune.details["base_checkpoint"] == {
        "checkpoint_id": "all-minilm-l6-v2",
        "engine": "text/all-minilm-l6-v2",
    }
    # An SDXL tune names its engine's checkpoint; this Berth's operator gave no weights.
    with pytest.raises(Unprocessable, match="BERTH_TRAINERS"):
        berth.create_tune("sdxl", [asset.id], engine="image/stable-diffusion-xl-v1-0")
    done = berth.wait_for_tune(tune.id, timeout=600)
    assert done.status == "succeeded" and len(done.output_lora_ids) == 1, done
    assert berth.get_asset(done.output_lora_ids[0]).asset_type == "lora"
    assert [t.id for t in berth.list_tunes(name=tune.name)] == [tune.id]

    async def the_async_client() -> None:
        async with AsyncClient(stack.url, stack.token) as aio:
            other = await aio.create_tune(f"sdk-async-{name[:30]}", [asset.id], steps=20_000)
            assert (await aio.cancel_tune(other.id)).status == "cancelled"
            assert (await aio.wait_for_tune(other.id, timeout=10)).status == "cancelled"
            await aio.delete_tune(other.id)

    asyncio.run(the_async_client())
    berth.delete_tune(tune.id)
    with pytest.raises(NotFound):
        berth.get_tune(tune.id)


def test_an_asset_imported_from_a_url(berth: Client, stack: Stack, name: str) -> None:
    """import_asset: the server fetches the URL; the asset comes back ready, or the
    server's reason comes back as Unprocessable (sync and async clients alike)."""
    from tests.test_assets import PNG_HEADER, Served

    png = PNG_HEADER + os.urandom(1000)
    served = Served({"/a.png": (200, png), "/text": (200, b"not an image")})
    try:
        asset = berth.import_asset(
            f"{served.url}/a.png", f"url-{name[:40]}", data={"file_format": "png"},
            sha256=hashlib.sha256(png).hexdigest(),
        )  # fmt: skip
        assert asset.status == "ready" and asset.size_bytes == len(png)
        with pytest.raises(Unprocessable, match="not a png file"):
            berth.import_asset(
                f"{served.url}/text", f"url-bad-{name[:36]}", data={"file_format": "png"}
            )

        async def the_async_client() -> str:
            async with AsyncClient(stack.url, stack.token) as aio:
                made = await aio.import_asset(f"{served.url}/a.png", f"url-aio-{name[:36]}")
                return made.status

        assert asyncio.run(the_async_client()) == "ready"
        cli = subprocess.run(
            [sys.executable, "-m", "berth.cli", "assets", "import", f"{served.url}/a.png",
             f"url-cli-{name[:36]}", "--data", '{"file_format": "png"}'],
            env={**os.environ, "BERTH_URL": stack.url, "BERTH_TOKEN": stack.token},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0 and " ready (" in cli.stdout, cli.stdout + cli.stderr
    finally:
        served.close()
