"""The model server on OctoAI's contract, in-process."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from workers.server import build_app
from workers.service import InvalidInput, Service, find_service, public_routes, route


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


class Threads(Service):
    """Says which thread runs each of its calls; ``infer(wait=True)`` holds until ``gate``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.running = threading.Event()

    def setup(self) -> None:
        self.seen.append(("setup", threading.get_ident()))

    def infer(self, wait: bool = False) -> int:
        self.seen.append(("infer", threading.get_ident()))
        if wait:
            self.running.set()
            assert self.gate.wait(10)
        return len(self.seen)

    def count(self, n: int) -> Iterator[int]:
        try:
            for i in range(n):
                self.seen.append(("chunk", threading.get_ident()))
                yield i
        finally:
            self.seen.append(("closed", threading.get_ident()))


async def held_call(client: httpx.AsyncClient, service: Threads) -> asyncio.Task[httpx.Response]:
    """A call of ``infer`` that holds the model until ``service.gate`` opens, once running."""
    await wait_status(client, 200)
    call = asyncio.create_task(client.post("/infer", json={"wait": True}))
    assert await asyncio.to_thread(service.running.wait, 10)
    return call


async def test_blocking_methods_run_on_one_thread_off_the_event_loop() -> None:
    service = Threads()
    async with serve(build_app(service)) as client:
        slow = await held_call(client, service)
        # The event loop is free while the model works: health checks still answer.
        assert (await client.get("/healthcheck")).status_code == 200
        assert not slow.done()
        service.gate.set()
        assert (await slow).json()["output"] == 2
        resp = await client.post("/count", json={"n": 3})
        assert resp.json()["output"] == [0, 1, 2]
    kinds = [kind for kind, _ in service.seen]
    assert kinds == ["setup", "infer", "chunk", "chunk", "chunk", "closed"]
    threads = {ident for _, ident in service.seen}
    # setup, each call and each step of a generator meet the same thread, not the loop's
    assert len(threads) == 1 and threading.get_ident() not in threads


async def test_a_cancelled_call_keeps_the_replica_until_it_returns() -> None:
    service = Threads()
    async with serve(build_app(service)) as client:
        first = await held_call(client, service)
        first.cancel()  # the caller goes away; the model's call cannot be stopped
        second = asyncio.create_task(client.post("/infer", json={}))
        done, _ = await asyncio.wait({first, second}, timeout=0.3)
        assert not done, "a call started while the cancelled one still ran"
        service.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (await second).json()["output"] == 3
    assert [kind for kind, _ in service.seen] == ["setup", "infer", "infer"]


class Shapes(Service):
    """Answers of every kind a model returns, and the ways a call fails."""

    def infer(self, kind: str, n: int = 1) -> Any:
        if kind == "invalid":
            raise InvalidInput("n must be odd")
        if kind == "crash":
            raise RuntimeError("the model broke")
        return {
            "dict": {"text": "é" * n, "nested": [1, 2.5, None, True]},
            "model": Point(x=n, y=-n),
            "dataclass": Pair(n, "b"),
            "when": datetime(2026, 12, 8, 5, 0, tzinfo=UTC),
            "floats": [1e-7, 1e300, float("nan"), float("inf")],
            "bytes": b"raw",
            "none": None,
            "set": {3},
        }[kind]

    def chunks(self, n: int) -> Iterator[dict[str, int]]:
        for i in range(n):
            yield {"i": i}


class Point(BaseModel):
    x: int
    y: int = Field(alias="why")

    model_config = ConfigDict(populate_by_name=True)


@dataclass
class Pair:
    a: int
    b: str


async def test_the_direct_path_answers_as_fastapi_does() -> None:
    """The model's routes skip FastAPI's layers; each answer is the one FastAPI's own
    route gives: status, headers and body, for every kind of output and failure."""
    service = Shapes()
    app = build_app(service)

    async def through_fastapi(scope: Any, receive: Any, send: Any) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    calls: list[tuple[str, dict[str, Any]]] = [("/infer", {"kind": k}) for k in (
        "dict", "model", "dataclass", "when", "floats", "bytes", "none", "set", "invalid"
    )]  # fmt: skip
    calls += [("/infer", {"kind": "dict", "extra": 1}), ("/infer", {}), ("/chunks", {"n": 3})]
    async with app.router.lifespan_context(app):
        direct = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
        plain = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=through_fastapi), base_url="http://r"
        )
        async with direct, plain:
            await wait_status(direct, 200)
            for path, body in calls:
                ours, theirs = await direct.post(path, json=body), await plain.post(path, json=body)
                assert ours.status_code == theirs.status_code, (path, body)
                assert _same(ours) == _same(theirs), (path, body)
            # Server-sent events, and a body that is not JSON at all.
            sse = {"accept": "text/event-stream"}
            ours = await direct.post("/chunks", json={"n": 2}, headers=sse)
            theirs = await plain.post("/chunks", json={"n": 2}, headers=sse)
            assert ours.headers == theirs.headers and ours.text == theirs.text
            assert ours.text.endswith("data: [DONE]\n\n")
            ours = await direct.post("/infer", content=b"{nope")
            theirs = await plain.post("/infer", content=b"{nope")
            assert (ours.status_code, ours.content) == (theirs.status_code, theirs.content)
            assert ours.status_code == 422
            # An unexpected error: a plain 500 both ways, and the error goes on to the server.
            for client in (direct, plain):
                with pytest.raises(RuntimeError, match="the model broke"):
                    await client.post("/infer", json={"kind": "crash"})
            # What reached the wire, as the server sends it: a plain 500, then the error.
            sent = await _raw_call(app, {"kind": "crash"})
    assert sent[0]["status"] == 500
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"Internal Server Error"


def _same(resp: httpx.Response) -> tuple[dict[str, str], bytes]:
    """A response's headers and body, its timing (which differs call to call) left out."""
    body = re.sub(rb'"inference_time_ms":[0-9.e+-]+', b'"inference_time_ms":0', resp.content)
    headers = dict(resp.headers)
    assert int(headers.pop("content-length")) == len(resp.content)
    return headers, body


async def _raw_call(app: FastAPI, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A POST /infer through the app itself: the messages it sent before it raised."""
    sent: list[dict[str, Any]] = []
    raw = json.dumps(body).encode()
    scope = {
        "type": "http", "method": "POST", "path": "/infer", "headers": [], "query_string": b"",
        "http_version": "1.1", "scheme": "http", "server": ("r", 80), "root_path": "",
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="the model broke"):
        await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


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


def test_the_model_thread_outlives_a_server_that_stopped_mid_call() -> None:
    """A call still running when its server's loop closes ends quietly, and the thread
    goes on to serve the next loop (the replica's server restarting in tests)."""
    from workers.server import _ModelThread

    model = _ModelThread()
    gate, running = threading.Event(), threading.Event()

    def slow() -> str:
        running.set()
        assert gate.wait(10)
        return "late"

    loop = asyncio.new_event_loop()

    async def begin() -> asyncio.Task[str]:
        task = asyncio.ensure_future(model.run(slow))
        async with asyncio.timeout(10):
            while not running.is_set():
                await asyncio.sleep(0.01)
        return task

    task = loop.run_until_complete(begin())
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # left pending on purpose
    loop.close()  # the call runs on
    gate.set()
    thread = model._thread
    assert thread is not None
    thread.join(timeout=1.0)  # returns at once if the thread died answering the closed loop
    assert thread.is_alive()

    async def again() -> str:
        return str(await model.run(lambda: "again"))

    assert asyncio.run(asyncio.wait_for(again(), 10)) == "again"
    del task
