"""The model server on OctoAI's contract, in-process."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from workers.server import build_app
from workers.service import Service, find_service, public_routes, route


class Slow(Service):
    def __init__(self) -> None:
        self.release = threading.Event()

    def setup(self) -> None:
        assert self.release.wait(10)

    def infer(self, prompt: str, n: int = 1) -> dict[str, str]:
        return {"text": prompt * n}

    def embed_text(self, text: str) -> list[int]:
        return [len(text)]

    @route("/v2/custom")
    def custom(self, x: int) -> int:
        return x + 1

    def _private(self) -> None:
        raise AssertionError


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            yield client


async def wait_status(client: httpx.AsyncClient, status: int) -> None:
    async with asyncio.timeout(10):
        while (await client.get("/healthcheck")).status_code != status:
            await asyncio.sleep(0.01)


async def test_health_is_503_while_loading_then_200() -> None:
    service = Slow()
    async with serve(build_app(service)) as client:
        resp = await client.get("/healthcheck")
        assert resp.status_code == 503 and resp.json() == {"status": "LOADING"}
        assert (await client.post("/infer", json={"prompt": "a"})).status_code == 503
        service.release.set()
        await wait_status(client, 200)
        assert (await client.get("/healthcheck")).json() == {"status": "RUNNING"}
        resp = await client.post("/infer", json={"prompt": "ab", "n": 2})
        assert resp.json()["output"] == {"text": "abab"}
        assert resp.json()["analytics"]["inference_time_ms"] >= 0
        assert (await client.post("/embed-text", json={"text": "abc"})).json()["output"] == [3]
        assert (await client.post("/v2/custom", json={"x": 1})).json()["output"] == 2
        assert (await client.post("/_private", json={})).status_code == 404
        assert (await client.post("/infer", json={"prompt": "a", "extra": 1})).status_code == 422
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/infer", "/embed-text", "/v2/custom", "/healthcheck"} <= set(paths)


class Failing(Service):
    def setup(self) -> None:
        raise ValueError("no GPU")

    def infer(self, prompt: str) -> str:
        return prompt


async def test_setup_failure_is_reported() -> None:
    seen: list[BaseException] = []
    async with serve(build_app(Failing(), on_setup_failure=seen.append)) as client:
        await wait_status(client, 500)
        assert [type(e) for e in seen] == [ValueError]
        resp = await client.get("/healthcheck")
        assert resp.status_code == 500
        assert resp.json() == {"status": "FAILED", "error": "ValueError: no GPU"}


def test_unannotated_input_is_rejected() -> None:
    class Bad(Service):
        def infer(self, prompt):  # type: ignore[no-untyped-def]
            return prompt

    with pytest.raises(TypeError, match="needs a type annotation"):
        build_app(Bad())


def test_public_routes_and_find_service() -> None:
    assert set(public_routes(Slow())) == {"/embed-text", "/v2/custom"}
    import types

    module = types.ModuleType("m")
    module.Service = Service  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="exactly one Service subclass"):
        find_service(module)


def test_the_model_server_needs_only_its_own_modules(tmp_path: Path) -> None:
    """`berth build` copies SERVER_MODULES alone into an image: they import nothing else of Berth."""
    from berth.build import ROOT, SERVER_MODULES

    (tmp_path / "workers").mkdir()
    for module in SERVER_MODULES:
        shutil.copy2(ROOT / "workers" / module, tmp_path / "workers" / module)
    check = (
        "import sys; "
        f"sys.path = [{str(tmp_path)!r}] + [p for p in sys.path if p.rstrip('/') != {str(ROOT)!r}]; "
        "import workers.replica, workers.server; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
