"""Fine-tuning against a running Berth: a tune trains a real adapter of the embeddings
example on the fleet (its own trainer endpoint, one job), its output becomes a LoRA
asset, and that asset mounted into an embeddings endpoint changes its answers on the
training pairs; bad tunes are refused with a clear 422, and a running one cancels."""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest

from tests.conftest import Stack, file_asset, wait_for

pytestmark = pytest.mark.e2e

ENGINE = "text/all-minilm-l6-v2"

SIMILAR = [
    ("A ship comes into the harbour", "A boat arrives at the dock"),
    ("The cat sleeps on the sofa", "A kitten naps on the couch"),
    ("It is raining heavily today", "There is a downpour this afternoon"),
    ("He repaired the old bicycle", "He fixed his worn-out bike"),
    ("The train leaves at noon", "The railway departure is at twelve"),
    ("She is reading a novel", "She reads a book of fiction"),
    ("The soup is too salty", "There is too much salt in the broth"),
    ("The meeting was postponed", "They moved the meeting to a later date"),
    ("Stock prices fell sharply", "Share values dropped steeply"),
    ("The child laughed loudly", "The kid giggled out loud"),
    ("Please close the window", "Shut the window, please"),
    ("The garden is full of roses", "Roses fill the garden"),
    ("He runs every morning", "Each morning he goes jogging"),
    ("The museum opens at nine", "Doors of the museum open at 9"),
    ("Our flight was delayed", "The plane took off late"),
    ("The coffee is cold", "The coffee has gone cold"),
]
DISSIMILAR = [
    ("A ship comes into the harbour", "The soup is too salty"),
    ("The cat sleeps on the sofa", "Stock prices fell sharply"),
    ("It is raining heavily today", "She is reading a novel"),
    ("He repaired the old bicycle", "The museum opens at nine"),
    ("The train leaves at noon", "The garden is full of roses"),
    ("She is reading a novel", "Our flight was delayed"),
    ("The soup is too salty", "He runs every morning"),
    ("The meeting was postponed", "The cat sleeps on the sofa"),
    ("Stock prices fell sharply", "The child laughed loudly"),
    ("The child laughed loudly", "Please close the window"),
    ("Please close the window", "A ship comes into the harbour"),
    ("The garden is full of roses", "The train leaves at noon"),
    ("He runs every morning", "The coffee is cold"),
    ("The museum opens at nine", "It is raining heavily today"),
    ("Our flight was delayed", "He repaired the old bicycle"),
    ("The coffee is cold", "The meeting was postponed"),
]


def _pairs_asset(c: httpx.Client) -> dict[str, Any]:
    lines = [{"a": a, "b": b, "label": 1} for a, b in SIMILAR]
    lines += [{"a": a, "b": b, "label": 0} for a, b in DISSIMILAR]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return file_asset(c, f"pairs-{secrets.token_hex(4)}", "jsonl", content)


def _tune_body(name: str, file_id: str, steps: int = 300, **details: Any) -> dict[str, Any]:
    return {
        "name": name,
        "description": None,
        "details": {
            "base_checkpoint": {"checkpoint_id": "all-minilm-l6-v2", "engine": ENGINE},
            "files": [{"file_id": file_id, "caption": "pairs"}],
            "steps": steps,
            "trigger_words": ["berthy"],
            **details,
        },
    }


def _loss(c: httpx.Client, endpoint: str, adapter: str | None) -> float:
    """Mean squared error of the pairs' cosines against their labels."""
    pairs = [(a, b, 1.0) for a, b in SIMILAR] + [(a, b, 0.0) for a, b in DISSIMILAR]
    body: dict[str, Any] = {"texts": [t for a, b, _ in pairs for t in (a, b)]}
    if adapter:
        body["adapter"] = adapter
    resp = c.post(f"/e/{endpoint}/infer", json=body, timeout=600)
    assert resp.status_code == 200, resp.text
    vectors = resp.json()["output"]["embeddings"]
    total = 0.0
    for i, (_, _, label) in enumerate(pairs):
        u, v = vectors[2 * i], vectors[2 * i + 1]
        total += (sum(x * y for x, y in zip(u, v, strict=True)) - label) ** 2
    return total / len(pairs)


def test_a_tune_trains_an_adapter_that_changes_the_endpoint_s_answers(
    stack: Stack, name: str
) -> None:
    with stack.client() as c:
        pairs = _pairs_asset(c)
        made = c.post("/v1/tune", json=_tune_body(f"t-{name[:40]}", pairs["id"], seed=1))
        assert made.status_code == 201, made.text
        tune = made.json()
        assert tune["status"] == "pending" and tune["output_lora_ids"] == []
        assert tune["details"]["tune_type"] == "lora_tune"  # filled in: TypeScript omits it
        assert tune["endpoint"].startswith("tune-")
        # Its training files are in use while it runs.
        assert c.delete(f"/v1/assets/{pairs['id']}").status_code == 409

        def ended() -> dict[str, Any] | None:
            got = c.get(f"/v1/tune/{tune['id']}").json()
            return got if got["status"] in ("succeeded", "failed", "cancelled") else None

        done = wait_for(ended, 600, "the tune to end")
        assert done["status"] == "succeeded", done
        assert done["metrics"]["loss_after"] < done["metrics"]["loss_before"] / 4
        lora = c.get(f"/v1/assets/{done['output_lora_ids'][0]}").json()["asset"]
        assert lora["status"] == "ready" and lora["asset_type"] == "lora"
        assert lora["data"]["engine"] == ENGINE and lora["data"]["trigger_words"] == ["berthy"]
        # The trainer endpoint went with its tune.
        wait_for(
            lambda: c.get(f"/v1/endpoint/{tune['endpoint']}").status_code == 404,
            30,
            "the trainer endpoint to be deleted",
        )
        listed = c.get("/v1/tunes", params={"name": tune["name"]}).json()
        assert [t["id"] for t in listed["data"]] == [tune["id"]] and listed["total"] == 1

        # Mounted into an embeddings endpoint, the adapter changes its answers.
        created = c.post(
            "/v1/endpoint",
            json={
                "name": name,
                "example": "embeddings",
                "min_replicas": 0,
                "max_replicas": 1,
                "assets": [lora["name"]],
            },
        )
        assert created.status_code == 201, created.text
        before, after = _loss(c, name, None), _loss(c, name, lora["name"])
        print(f"loss on the training pairs: base {before:.4f}, with the adapter {after:.4f}")
        assert after < before / 2, (before, after)
        bad = c.post(f"/e/{name}/infer", json={"texts": ["x"], "adapter": "no-such-adapter"})
        assert bad.status_code == 422

        assert c.delete(f"/v1/tune/{tune['id']}").status_code == 200
        assert c.get(f"/v1/tune/{tune['id']}").status_code == 404
        assert c.get(f"/v1/assets/{lora['id']}").json()["asset"]["status"] == "ready"  # stays


def test_a_running_tune_cancels(stack: Stack, name: str) -> None:
    with stack.client() as c:
        pairs = _pairs_asset(c)
        tune = c.post("/v1/tune", json=_tune_body(f"c-{name[:40]}", pairs["id"], steps=20_000))
        assert tune.status_code == 201, tune.text
        tune_id = tune.json()["id"]
        cancelled = c.post(f"/v1/tune/{tune_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert c.post(f"/v1/tune/{tune_id}/cancel").json()["status"] == "cancelled"  # twice: fine
        wait_for(
            lambda: c.get(f"/v1/endpoint/{tune.json()['endpoint']}").status_code == 404,
            30,
            "the trainer endpoint to be deleted",
        )
        assert c.get(f"/v1/tune/{tune_id}").json()["status"] == "cancelled"
        assert c.delete(f"/v1/assets/{pairs['id']}").status_code == 200  # no longer in use


def test_tunes_that_cannot_run_are_refused_with_the_reason(stack: Stack) -> None:
    with stack.client() as c:
        pairs = _pairs_asset(c)
        cases: list[tuple[dict[str, Any], str]] = [
            (_tune_body("x", pairs["id"], base_checkpoint={"checkpoint_id": "sd"}), "engine"),
            (
                _tune_body(
                    "x",
                    pairs["id"],
                    base_checkpoint={
                        "checkpoint_id": "sd",
                        "engine": "image/stable-diffusion-v1-5",
                    },
                ),
                "no trainer",
            ),
            (
                # Its trainer needs the base weights, which this Berth's operator did not give.
                _tune_body(
                    "x",
                    pairs["id"],
                    base_checkpoint={
                        "checkpoint_id": "sdxl",
                        "engine": "image/stable-diffusion-xl-v1-0",
                    },
                ),
                "SDXL_WEIGHTS in BERTH_TRAINERS",
            ),
            (_tune_body("x", pairs["id"], tune_type="text_to_speech_rvc_tune"), "no trainer"),
            (_tune_body("x", pairs["id"], tune_type="nope"), "tune_type"),
            (_tune_body("x", "asset_nope"), "does not exist"),
            (_tune_body("x", pairs["id"], steps=0), "steps"),
            (_tune_body("x", pairs["id"], files=[]), "files"),
            (_tune_body("bad name!", pairs["id"]), "name"),
        ]
        for body, words in cases:
            resp = c.post("/v1/tune", json=body)
            assert resp.status_code == 422, (body, resp.text)
            assert words in resp.json()["error"]["message"], (words, resp.text)
        assert c.get("/v1/tune/tune_nope").status_code == 404
        assert c.post("/v1/tune/tune_nope/cancel").status_code == 404
