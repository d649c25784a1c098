"""Fine-tuning Stable Diffusion XL against a running Berth: a ``lora_tune`` for
``image/stable-diffusion-xl-v1-0`` runs the sdxl example's trainer on the fleet, its
LoRA becomes an asset, and that asset mounted into an sdxl endpoint changes the
pictures it draws; OctoAI's older client (``octoai-sdk`` 0.10.1), which only knows the
image engines, runs its fine-tuning calls unchanged.

The model is the real sdxl example with its real requirements (torch, diffusers,
transformers, peft), installed by the agent as on a GPU host, on the CPU: the
weights are a tiny SDXL with random weights (tests/tiny_sdxl.py), the same
architecture a few thousandth of its size, which the operator's BERTH_TRAINERS
names as the engine's base. torch is its CPU build, which pip finds on this kind of
machine (its own configuration names a folder of wheels); the agent's uv is pointed
at it with UV_FIND_LINKS and pinned to it with UV_CONSTRAINT, as an operator with
a local wheelhouse would.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat

from berth.local import ROOT
from tests.conftest import FAST, NatsServer, Stack, file_asset, wait_for
from tests.test_octoai_clients import run_client

pytestmark = pytest.mark.e2e

ENGINE = "image/stable-diffusion-xl-v1-0"
TORCH = "torch==2.13.0+cpu"  # the CPU build pip finds on this kind of machine
CACHE = Path.home() / ".cache" / "berth-tests" / "sdxl"
REQUIREMENTS = ROOT / "examples" / "sdxl" / "requirements.txt"


def _need(what: str, exc: BaseException) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}: {exc}")
    pytest.skip(f"{what}: {exc}")


def _torch_wheels() -> tuple[Path, Path]:
    """A folder holding torch's CPU wheel, and a constraints file pinning it."""
    wheels = CACHE / "wheels"
    constraints = CACHE / "constraints.txt"
    if not any(wheels.glob("torch-*.whl")):
        pip = [shutil.which("python3") or "python3", "-m", "pip"]
        try:
            subprocess.run(
                [*pip, "download", "-q", "--no-deps", "--only-binary", ":all:",
                 "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
                 "-d", str(wheels), TORCH],
                check=True, timeout=600, capture_output=True, text=True,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            _need(
                f"pip could not fetch {TORCH} (a CPU build of torch)",
                RuntimeError(detail[-800:] or exc),
            )
    constraints.write_text(TORCH + "\n")
    return wheels, constraints


def _uv_env(wheels: Path, constraints: Path) -> dict[str, str]:
    return {"UV_FIND_LINKS": str(wheels), "UV_CONSTRAINT": str(constraints)}


def _site(wheels: Path, constraints: Path) -> Path:
    """The sdxl example's requirements installed once for this test's own use (making
    the tiny weights): the same resolution the agent makes."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + TORCH.encode()).hexdigest()[:16]
    site = CACHE / f"site-{key}"
    if (site / ".installed").exists():
        return site
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    building = CACHE / f".site-{secrets.token_hex(4)}"
    try:
        subprocess.run(
            [uv, "pip", "install", "-q", "--python", sys.executable, "--target", str(building),
             "-r", str(REQUIREMENTS)],
            check=True, timeout=1200, capture_output=True, text=True,
            env={**os.environ, **_uv_env(wheels, constraints)},
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(building, ignore_errors=True)
        _need("the sdxl example's requirements could not be installed", exc)
    (building / ".installed").write_text("")
    shutil.rmtree(site, ignore_errors=True)
    building.rename(site)
    return site


def _tiny_weights(site: Path) -> Path:
    script = ROOT / "tests" / "tiny_sdxl.py"
    key = hashlib.sha256(script.read_bytes() + site.name.encode()).hexdigest()[:16]
    out = CACHE / f"weights-{key}"
    if (out / "model_index.json").exists():
        return out
    building = CACHE / f".weights-{secrets.token_hex(4)}"
    run = subprocess.run(
        [sys.executable, str(script), str(building)],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    shutil.rmtree(out, ignore_errors=True)
    building.rename(out)
    return out


@pytest.fixture(scope="module")
def sdxl_setup() -> tuple[Path, Path, Path, Path]:
    """torch's wheel folder, its constraints file, the requirements installed for this
    test's own use, and the tiny weights."""
    wheels, constraints = _torch_wheels()
    site = _site(wheels, constraints)
    return wheels, constraints, site, _tiny_weights(site)


@pytest.fixture(scope="module")
def sdxl_stack(
    sdxl_setup: tuple[Path, Path, Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
    _replica_shared: Path,
) -> Iterator[tuple[Stack, Path]]:
    """A Berth whose operator set up the SDXL trainer (BERTH_TRAINERS) with the tiny
    weights, readable by replicas; and the weights' folder. On a nats-server of its own:
    on the session's, the other stacks' scaler and agents would serve its endpoints too
    (without its uv settings and its longer start budget)."""
    wheels, constraints, _, weights = sdxl_setup
    shared = Path(tempfile.mkdtemp(prefix="sdxl-", dir=_replica_shared))
    readable = shutil.copytree(weights, shared / "sdxl-tiny")
    for folder, _, files in os.walk(shared):
        os.chmod(folder, 0o755)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o644)
    base = {"SDXL_WEIGHTS": str(readable), "SDXL_DEVICE": "cpu"}
    env = {
        **FAST,
        **_uv_env(wheels, constraints),
        # The replica imports torch and diffusers, then loads: more than FAST's 30 s on a
        # busy two-core machine.
        "BERTH_STARTUP_BUDGET": "300",
        "BERTH_TRAINERS": json.dumps({ENGINE: {"instance_type": "cpu", "env": base}}),
    }
    nats = NatsServer(tmp_path_factory.mktemp("sdxl-nats")).start()
    s = Stack(tmp_path_factory.mktemp("berth-sdxl"), nats.url, env=env)
    try:
        s.start()
        yield s, readable
    finally:
        s.close()
        nats.stop()


def _picture(c: httpx.Client, colour: tuple[int, int, int], fmt: str) -> dict[str, Any]:
    """A small noisy picture of ``colour``, uploaded as a file asset."""
    rng = random.Random(sum(colour))
    picture = Image.new("RGB", (48, 40), colour)
    for _ in range(300):
        picture.putpixel((rng.randrange(48), rng.randrange(40)), (rng.randrange(256),) * 3)
    buf = io.BytesIO()
    picture.save(buf, format="PNG" if fmt == "png" else "JPEG")
    return file_asset(c, f"pic-{secrets.token_hex(4)}.{fmt}", fmt, buf.getvalue())


def _draw(c: httpx.Client, endpoint: str, **extra: Any) -> Image.Image:
    resp = c.post(
        f"/e/{endpoint}/infer",
        json={"prompt": "berthy on a red square", "steps": 4, "seed": 3, **extra},
        timeout=300,
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()["output"]["images"][0]["data"]
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def _difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel, 0-255."""
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def test_an_sdxl_tune_trains_a_lora_that_changes_the_pictures(
    sdxl_stack: tuple[Stack, Path], name: str
) -> None:
    stack, weights = sdxl_stack
    with stack.client() as c:
        red, green = _picture(c, (200, 30, 30), "png"), _picture(c, (30, 200, 30), "jpg")
        body = {
            "name": f"sd-{name[:40]}",
            "details": {
                "base_checkpoint": {"checkpoint_id": "octoai:default-sdxl", "engine": ENGINE},
                "files": [
                    {"file_id": red["id"], "caption": "berthy on a red square"},
                    {"file_id": green["id"]},  # the trigger words stand in
                ],
                "steps": 60,
                "trigger_words": ["berthy"],
                "seed": 1,
                "tune_type": "lora_tune",
            },
        }
        made = c.post("/v1/tune", json=body)
        assert made.status_code == 201, made.text  # as OctoAI answered (0.10 insists)
        tune = made.json()
        assert tune["status"] == "pending"
        assert c.delete(f"/v1/assets/{red['id']}").status_code == 409  # in use while it runs

        def ended() -> dict[str, Any] | None:
            got = c.get(f"/v1/tune/{tune['id']}").json()
            return got if got["status"] in ("succeeded", "failed", "cancelled") else None

        done = wait_for(ended, 900, "the SDXL tune to end")
        assert done["status"] == "succeeded", done["status_details"]
        metrics = done["metrics"]
        print(f"SDXL tune: {metrics}")
        assert metrics["pictures"] == 2 and metrics["steps"] == 60
        # The loss on fixed noise draws went down: the adapter learnt the pictures.
        assert metrics["loss_after"] < metrics["loss_before"], metrics
        lora = c.get(f"/v1/assets/{done['output_lora_ids'][0]}").json()["asset"]
        assert lora["asset_type"] == "lora" and lora["status"] == "ready"
        assert lora["data"]["engine"] == ENGINE and lora["data"]["file_format"] == "safetensors"
        assert lora["data"]["trigger_words"] == ["berthy"]
        wait_for(
            lambda: c.get(f"/v1/endpoint/{tune['endpoint']}").status_code == 404,
            30,
            "the trainer endpoint to be deleted",
        )

        # Mounted into an sdxl endpoint, the LoRA changes what it draws, by its weight.
        created = c.post(
            "/v1/endpoint",
            json={
                "name": name,
                "example": "sdxl",
                "instance_type": "cpu",
                "env_overrides": {"SDXL_WEIGHTS": str(weights), "SDXL_DEVICE": "cpu"},
                "assets": [lora["name"], red["name"]],
            },
        )
        assert created.status_code == 201, created.text
        plain = _draw(c, name)
        tuned = _draw(c, name, loras={lora["name"]: 1.0})
        plain_again = _draw(c, name)
        nothing = _draw(c, name, loras={lora["name"]: 0.0})
        changed = _difference(plain, tuned)
        print(f"mean pixel difference with the LoRA: {changed:.2f}")
        assert changed > 0.5, changed
        assert _difference(plain, plain_again) == 0  # a request without it is the base model
        assert _difference(plain, nothing) < changed / 10
        assert plain.size == (32, 32)  # the model's own side (the tiny one's)

        missing = c.post(f"/e/{name}/infer", json={"prompt": "x", "loras": {"no-such": 1.0}})
        assert missing.status_code == 422 and "no-such" in missing.text
        not_lora = c.post(f"/e/{name}/infer", json={"prompt": "x", "loras": {red["name"]: 1.0}})
        assert not_lora.status_code == 422 and "not an SDXL LoRA" in not_lora.text, not_lora.text
        assert _difference(plain, _draw(c, name)) == 0  # and a refused LoRA left nothing on


def test_sdxl_tunes_that_cannot_run_are_refused(sdxl_stack: tuple[Stack, Path]) -> None:
    stack, _ = sdxl_stack
    with stack.client() as c:
        notes = file_asset(c, f"notes-{secrets.token_hex(4)}", "jsonl", b'{"a": 1}\n')
        picture = _picture(c, (10, 10, 200), "png")

        def refused(files: list[dict[str, Any]], **details: Any) -> str:
            body = {
                "name": f"x-{secrets.token_hex(3)}",
                "details": {
                    "base_checkpoint": {"checkpoint_id": "octoai:default-sdxl", "engine": ENGINE},
                    "files": files,
                    "steps": 10,
                    "trigger_words": ["berthy"],
                    **details,
                },
            }
            resp = c.post("/v1/tune", json=body)
            assert resp.status_code == 422, resp.text
            return str(resp.json()["error"]["message"])

        assert "reads png" in refused([{"file_id": notes["id"]}])
        assert "caption" in refused([{"file_id": picture["id"], "caption": 7}])
        assert "resize_images" in refused([{"file_id": picture["id"]}], resize_images="yes")
        assert "trigger_words" in refused([{"file_id": picture["id"]}], trigger_words=["w"] * 9)


def test_octoai_sdk_0_10_runs_an_sdxl_tune_unchanged(
    sdxl_stack: tuple[Stack, Path], tmp_path: Path
) -> None:
    stack, _ = sdxl_stack
    out = run_client(stack, "octoai-sdk-0.10.txt", "octoai_sdk_010_tunes.py", tmp_path)
    tag = out["tag"]
    assert out["status"] == "succeeded", out
    assert out["tune_type"] == "lora_tune" and len(out["outputs"]) == 1
    assert out["engine"] == ENGINE
    assert out["cancelled"] == "cancelled"
    assert out["listed"] == [f"other010-{tag}", f"tune010-{tag}"]
    assert out["after_delete"] == [f"tune010-{tag}"]
    with stack.client() as c:  # Berth agrees: the output is an SDXL LoRA
        lora = c.get(f"/v1/assets/{out['outputs'][0]}").json()["asset"]
        assert lora["asset_type"] == "lora" and lora["data"]["engine"] == ENGINE


HALF = """
import json, pathlib, sys, tempfile
sys.path.insert(0, sys.argv[2])
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image
import lora

pipe = StableDiffusionXLPipeline.from_pretrained(
    sys.argv[1], torch_dtype=torch.float16, use_safetensors=True, local_files_only=True
)
side = pipe.unet.config.sample_size * pipe.vae_scale_factor
pictures = [
    lora.square(Image.new("RGB", (40, 30), c), side, crop=True) for c in ((200, 0, 0), (0, 200, 0))
]
out = lora.train(
    pipe, pictures, ["berthy red", "berthy green"], side=side, steps=30, rank=4,
    learning_rate=1e-3, seed=0, progress=lambda step, loss: None,
)
kinds = {str(p.dtype) for n, p in pipe.unet.named_parameters() if "lora" in n}
with tempfile.TemporaryDirectory() as d:
    size = lora.save(pipe, pathlib.Path(d), {}).stat().st_size
print(json.dumps({
    "before": out["loss_before"], "after": out["loss_after"], "size": size, "lora": sorted(kinds),
    "unet": str(pipe.unet.dtype), "vae": str(pipe.vae.dtype),
}))
"""


def test_the_trainer_runs_in_half_precision_as_on_a_gpu(
    sdxl_setup: tuple[Path, Path, Path, Path],
) -> None:
    """On a GPU the sdxl example loads SDXL in float16; the CPU runs above are float32.
    The trainer itself, in float16 on this CPU: the adapter learns in float32 beside the
    float16 UNet, the VAE encodes in float32 (SDXL's overflows in float16) and is put back."""
    _, _, site, weights = sdxl_setup
    run = subprocess.run(
        [sys.executable, "-c", HALF, str(weights), str(ROOT / "examples" / "sdxl")],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["unet"] == out["vae"] == "torch.float16", out
    assert out["lora"] == ["torch.float32"], out
    assert out["after"] < out["before"] and out["size"] > 0, out
