"""The example catalogue through a real stack: each CPU example deployed in one step,
computing a right answer, and its snippets working when pasted."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from berth.local import ROOT
from tests.conftest import Stack, wait_for
from workers.media import Media
from workers.service import Service

pytestmark = pytest.mark.e2e

SSE = {"Accept": "text/event-stream"}


def need(program: str, package: str) -> None:
    if shutil.which(program) is None:
        reason = f"{program} is not installed (Debian: {package})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def create(stack: Stack, name: str, example: str, **fields: Any) -> dict[str, Any]:
    with stack.client() as c:
        resp = c.post("/v1/endpoint", json={"name": name, "example": example, **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def rendered(text: str) -> bytes:
    """A PNG of ``text`` in dark letters on white, drawn here."""
    font = ImageFont.load_default(size=40)
    image = Image.new("L", (40 + 24 * len(text), 90), 255)
    ImageDraw.Draw(image).text((20, 20), text, font=font, fill=0)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def wav_seconds(data: str) -> float:
    with wave.open(io.BytesIO(base64.b64decode(data))) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.getnframes() / w.getframerate()


def test_the_catalogue_lists_each_example_with_its_inputs(stack: Stack) -> None:
    with stack.client() as c:
        listed = {e["name"]: e for e in c.get("/v1/examples").json()}
        assert {"echo", "ocr", "tts"} <= set(listed)
        tts = listed["tts"]["routes"]
        assert tts["/infer"]["input_schema"]["properties"]["voice"]["enum"][0] == "en-gb"
        assert tts["/infer"]["input_schema"]["properties"]["speed"]["maximum"] == 450
        assert tts["/speak"]["streams"] is True
        assert listed["ocr"]["needs"] and listed["ocr"]["defaults"]["max_replicas"] == 2
        one = c.get("/v1/examples/ocr").json()
        assert base64.b64decode(one["sample_input"]["image"]["data"]).startswith(b"\x89PNG")
        assert c.get("/v1/examples/nope").status_code == 404
        bad = c.post("/v1/endpoint", json={"name": "no-such-example", "example": "nope"})
        assert bad.status_code == 422 and "nope" in bad.json()["error"]["message"]
        both = c.post("/v1/endpoint", json={"name": "both", "example": "echo", "model_id": "x"})
        assert both.status_code == 422


def test_ocr_reads_back_the_words_of_an_image(stack: Stack, name: str) -> None:
    need("tesseract", "tesseract-ocr")
    made = create(stack, name, "ocr", max_replicas=1)
    assert made["example"] == "ocr" and made["model_id"].startswith("sha256:")
    words = "Harbour lights glow tonight"
    with stack.client() as c:
        resp = c.post(
            f"/e/{name}/infer", json={"image": {"data": base64.b64encode(rendered(words)).decode()}}
        )
        assert resp.status_code == 200, resp.text
        out = resp.json()["output"]
        assert out["text"] == words
        assert [w["text"] for w in out["words"]] == words.split()
        lefts = [w["box"][0] for w in out["words"]]
        assert lefts == sorted(lefts) and all(w["confidence"] > 50 for w in out["words"])
        # Input the model cannot use is the caller's error, with the reason.
        junk = c.post(f"/e/{name}/infer", json={"image": {"data": "not base64!"}})
        assert junk.status_code == 422 and "base64" in junk.json()["error"]["message"]
        lang = c.post(
            f"/e/{name}/infer",
            json={"image": {"data": base64.b64encode(b"x").decode()}, "lang": "xx"},
        )
        assert lang.status_code == 422


def test_speech_is_a_wav_as_long_as_its_text(stack: Stack, name: str) -> None:
    need("espeak-ng", "espeak-ng")
    create(stack, name, "tts", max_replicas=1)
    with stack.client() as c:
        short = c.post(f"/e/{name}/infer", json={"text": "Hello."}).json()["output"]
        text = "The tide turns twice a day, and the ships wait for it in the harbour."
        long = c.post(f"/e/{name}/infer", json={"text": text, "voice": "en-gb"}).json()["output"]
        slow = c.post(f"/e/{name}/infer", json={"text": text, "speed": 90}).json()["output"]
        assert 0.3 < wav_seconds(short["audio"]["data"]) < 2.0
        assert 2.5 < wav_seconds(long["audio"]["data"]) < 9.0
        assert wav_seconds(long["audio"]["data"]) == pytest.approx(long["seconds"], abs=0.01)
        assert slow["seconds"] > 1.5 * long["seconds"]  # 90 words a minute against 175
        assert c.post(f"/e/{name}/infer", json={"text": "x", "voice": "klingon"}).status_code == 422

        # Streamed: a WAV per sentence, each as it is made.
        chunks = []
        body = {"text": "First the lines. Then the sails! Off we go."}
        with c.stream("POST", f"/e/{name}/speak", json=body, headers=SSE) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line.removeprefix("data: ")))
        assert [ch["text"] for ch in chunks] == [
            "First the lines.",
            "Then the sails!",
            "Off we go.",
        ]
        assert all(wav_seconds(ch["audio"]["data"]) > 0.3 for ch in chunks)


def test_the_pasted_curl_snippet_works(stack: Stack, name: str) -> None:
    need("tesseract", "tesseract-ocr")
    create(stack, name, "ocr", max_replicas=1)
    with stack.client() as c:
        found = c.get(f"/v1/endpoint/{name}/snippets").json()
    assert found["url"] == f"{stack.url}/e/{name}/infer"
    assert set(found["snippets"]) == {"curl", "python", "python_octoai", "typescript"}
    env = {**os.environ, "BERTH_TOKEN": stack.token}
    done = subprocess.run(
        ["bash", "-c", found["snippets"]["curl"] + " -w '\\n%{http_code}'"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    body, _, status = done.stdout.rpartition("\n")
    assert status == "200", done.stdout + done.stderr
    assert json.loads(body)["output"]["text"] == "Ships come in at dawn"
    # The Python one too, as pasted (httpx is at hand).
    ran = subprocess.run(
        [sys.executable, "-c", found["snippets"]["python"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0 and "Ships come in at dawn" in ran.stdout, ran.stderr
    # And the TypeScript one, with Node's own fetch (an ES module: top-level await).
    need("node", "nodejs")
    ts = subprocess.run(
        ["node", "--input-type=module", "-e", found["snippets"]["typescript"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ts.returncode == 0 and "Ships come in at dawn" in ts.stdout, ts.stderr


def test_the_cli_deploys_an_example_and_prints_its_snippets(stack: Stack, name: str) -> None:
    env = {**os.environ, "BERTH_URL": stack.url, "BERTH_TOKEN": stack.token}

    def berth(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "berth.cli", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "ocr" in berth("examples")
    assert f"endpoint {name} created (example echo)" in berth(
        "deploy", "--example", "echo", "--name", name
    )
    curl = berth("snippets", name, "--lang", "curl")
    done = subprocess.run(
        ["bash", "-c", curl], env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(done.stdout)["output"]["text"] == "hellohello", done.stdout + done.stderr
    wait_for(lambda: stack.replicas(name), 10, "the replica to show")


def test_embeddings_of_paraphrases_are_closest(stack: Stack, name: str) -> None:
    """The first replica installs the example's requirements (once per agent; the event
    says so), then computes real sentence embeddings, a batch per request."""
    create(stack, name, "embeddings", max_replicas=1)
    texts = [
        "A ship comes into the harbour",
        "A boat arrives at the dock",
        "The recipe needs two eggs and flour",
        "Bake the cake for forty minutes",
    ]
    with stack.client() as c:
        resp = c.post(f"/e/{name}/infer", json={"texts": texts}, timeout=600)
        assert resp.status_code == 200, resp.text
        out = resp.json()["output"]
        events = [e["event"]["type"] for e in c.get(f"/v1/events/{name}").json()]
    assert out["dimensions"] == 384 and len(out["embeddings"]) == 4
    v = [[float(x) for x in row] for row in out["embeddings"]]

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert all(abs(cos(row, row) - 1) < 1e-4 for row in v)  # unit length
    assert cos(v[0], v[1]) > 0.5 > max(cos(v[0], v[2]), cos(v[0], v[3]), cos(v[1], v[2]))
    assert cos(v[2], v[3]) > max(cos(v[0], v[2]), cos(v[1], v[3]))  # kitchen with kitchen
    assert "environment_installed" in events or "environment_install_started" not in events


def test_requirements_that_cannot_be_installed_fail_the_start_with_uvs_reason(
    stack: Stack, name: str, tmp_path: Path
) -> None:
    model = tmp_path / "needy"
    model.mkdir()
    shutil.copy(ROOT / "examples" / "echo" / "service.py", model / "service.py")
    (model / "requirements.txt").write_text("berth-no-such-package-anywhere==9.9.9\n")
    stack.deploy(name, model, max_replicas=1)
    with stack.client() as c:
        resp = c.post(f"/e/{name}/infer", json={"prompt": "x"}, timeout=120)
        assert resp.status_code == 503, resp.text

        def failed() -> str:
            for e in c.get(f"/v1/events/{name}").json():
                if e["event"]["type"] == "replica_start_failed":
                    return str(e["event"]["details"]["reason"])
            return ""

        reason = wait_for(failed, 60, "the start to fail")
    assert "could not be installed" in reason and "berth-no-such-package-anywhere" in reason


def test_the_image_model_computes_its_picture_from_the_input(stack: Stack, name: str) -> None:
    create(stack, name, "imagefx", max_replicas=1)

    def picture(box: tuple[int, int, int, int]) -> str:
        image = Image.new("RGB", (200, 120), "white")
        ImageDraw.Draw(image).rectangle(box, fill=(200, 30, 30))
        out = io.BytesIO()
        image.save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode()

    def run(data: str, **inputs: Any) -> Image.Image:
        with stack.client() as c:
            resp = c.post(f"/e/{name}/infer", json={"image": {"data": data}, **inputs})
        assert resp.status_code == 200, resp.text
        return Image.open(io.BytesIO(base64.b64decode(resp.json()["output"]["image"]["data"])))

    edges = run(picture((50, 30, 150, 90)), effect="edges")
    assert edges.size == (200, 120)
    assert max(edges.getpixel((x, 60))[0] for x in range(47, 53)) > 100  # the box's border
    assert edges.getpixel((100, 60)) == (0, 0, 0) and edges.getpixel((10, 10)) == (0, 0, 0)
    moved = run(picture((20, 30, 120, 90)), effect="edges")
    assert moved.tobytes() != edges.tobytes()  # another input, another output
    inverted = run(picture((50, 30, 150, 90)), effect="invert", strength=0.5)
    assert all(abs(v - 128) <= 1 for v in inverted.getpixel((10, 10)))  # half way to black
    with stack.client() as c:
        bad = c.post(f"/e/{name}/infer", json={"image": {"data": base64.b64encode(b"no").decode()}})
        assert bad.status_code == 422 and "image" in bad.json()["error"]["message"]


def test_the_gpu_example_says_what_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SDXL is listed with its GPU instance type and its inputs; where the weights, its
    packages or a GPU are missing, its start fails saying which (its real run needs a GPU
    host: not part of the CPU test run)."""
    from api.examples import Catalog
    from workers.replica import load_service

    sdxl = Catalog().get("sdxl").public()
    assert sdxl["instance_type"] == "gpu.a10g"
    assert sdxl["routes"]["/infer"]["input_schema"]["properties"]["steps"]["maximum"] == 100
    service = load_service(ROOT / "examples" / "sdxl")
    monkeypatch.delenv("SDXL_WEIGHTS", raising=False)
    with pytest.raises(RuntimeError, match="SDXL_WEIGHTS is not set"):
        service.setup()
    monkeypatch.setenv("SDXL_WEIGHTS", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"no model_index\.json"):
        service.setup()
    (tmp_path / "model_index.json").write_text("{}")
    try:
        import torch
    except ImportError:
        with pytest.raises(RuntimeError, match="torch and diffusers are needed"):
            service.setup()
    else:
        if not torch.cuda.is_available():
            with pytest.raises(RuntimeError, match="no CUDA GPU"):
                service.setup()


def test_snippets_of_an_uploaded_model_come_from_its_schema(stack: Stack, name: str) -> None:
    """A model that is not from the catalogue: once a replica runs, its snippets carry an
    input built from the model's own schema (required inputs), and they work as pasted."""
    stack.deploy(name, "echo", min_replicas=1, max_replicas=1)
    wait_for(lambda: any(r["status"] == "running" for r in stack.replicas(name)), 60, "a replica")
    with stack.client() as c:
        found = c.get(f"/v1/endpoint/{name}/snippets").json()
    assert found["input_from"] == "schema" and found["input"] == {"prompt": "text"}
    env = {**os.environ, "BERTH_TOKEN": stack.token}
    done = subprocess.run(
        ["bash", "-c", found["snippets"]["curl"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(done.stdout)["output"]["text"] == "text", done.stdout + done.stderr


def test_a_sample_fits_each_kind_of_schema() -> None:
    from api.examples import sample_from_openapi, sample_from_schema
    from workers.server import build_app

    class Many(Service):
        def infer(
            self,
            words: list[str],
            image: Media,
            count: int = 3,
            ratio: float = 0.5,
            on: bool = True,
        ) -> dict:
            return {}

    document = build_app(Many()).openapi()
    assert sample_from_openapi(document) == {"words": ["text"], "image": {"data": "text"}}
    assert sample_from_schema({"type": "integer", "minimum": 4}) == 4
    assert sample_from_schema({"enum": ["b", "c"]}) == "b"
    assert sample_from_schema({"anyOf": [{"type": "null"}, {"type": "number"}]}) == 1
    assert sample_from_openapi({"paths": {}}) is None
