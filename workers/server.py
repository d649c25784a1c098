"""The model server inside a replica, on OctoAI's contract.

``GET /healthcheck`` answers 503 ``{"status": "LOADING"}`` while ``setup()``
runs and 200 ``{"status": "RUNNING"}`` after; ``POST /infer`` takes the typed
inputs of ``infer`` as a JSON object and answers ``{"output": ...,
"analytics": {"inference_time_ms": ...}}``; extra public methods are extra
routes; ``/openapi.json`` and ``/docs`` describe it all. One request runs at a
time: plain methods (``setup`` too) on one thread of the model's own, so the event
loop stays free to answer health checks; ``async def`` methods on the loop.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real
# input models built at run time in the handlers' signatures.

import asyncio
import contextlib
import contextvars
import hmac
import inspect
import json
import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.service import REPLICA_KEY_HEADER, InvalidInput, Service, public_routes

__all__ = ["State", "build_app", "input_model", "require_key"]

log = logging.getLogger("berth.replica")


# Proxies must pass each event on at once.
_NO_BUFFERING = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _own_tracing() -> dict[str, Any]:
    """FastAPI's own telemetry off (FastAPI 0.165 and later trace by themselves once a
    tracer provider is set): the replica's span is workers/tracing.py's, one per request."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    off = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    return {"telemetry": off}


class State(StrEnum):
    LOADING = "LOADING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"


def input_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    """A pydantic model of a method's keyword inputs; every input must be annotated."""
    fields: dict[str, Any] = {}
    # eval_str: a model module with `from __future__ import annotations` has string annotations.
    for param in inspect.signature(fn, eval_str=True).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.annotation is inspect.Parameter.empty:
            raise TypeError(f"{fn.__qualname__}: input {param.name!r} needs a type annotation")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (param.annotation, default)
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


class _ModelThread:
    """The thread a service's blocking methods run on, one call at a time.

    A service runs one request at a time, so one thread is enough: ``setup`` and every
    call of ``infer`` meet the same thread (and its thread-local state, such as a
    framework's default device or grad mode). Handing a call over is a put on a C queue,
    and its answer comes back with one ``call_soon_threadsafe``: less CPU per request than
    a general thread pool's hand-over (docs/performance.md).
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the thread, in the caller's context; a cancel of the
        caller waits for the call to end (the thread cannot be interrupted)."""
        if self._thread is None:  # started here: a zygote forks servers built before any call
            self._thread = threading.Thread(target=self._serve, name="berth-model", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._calls.put((contextvars.copy_context(), fn, args, kwargs, loop, done))
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            while not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(done)
            raise

    def _serve(self) -> None:
        while True:
            ctx, fn, args, kwargs, loop, done = self._calls.get()
            result: Any = None
            error: BaseException | None = None
            try:
                result = ctx.run(fn, *args, **kwargs)
            except BaseException as exc:  # the model's, whatever it is: the caller's to see
                error = exc
            # The server stopped while the call ran: its loop is closed, nobody waits.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done, result, error)


_END = object()  # a generator's end, as next() returns it


def _settle(done: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if done.cancelled():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(result)


class _Status:
    __slots__ = ("error", "state")

    def __init__(self) -> None:
        self.state = State.LOADING
        self.error: str | None = None


def require_key(app: ASGIApp, key: str) -> ASGIApp:
    """``app``, answering 403 to any request without the replica's key (the first
    ``x-berth-replica-key`` header): only its agent calls a replica."""
    expected = key.encode()
    header = REPLICA_KEY_HEADER.encode()
    refused = JSONResponse(
        {"error": {"code": "forbidden", "message": "only the replica's agent may call it"}},
        status_code=403,
    )

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == header), b"")
            if not hmac.compare_digest(given, expected):
                await refused(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


def build_app(
    service: Service, *, on_setup_failure: Callable[[BaseException], None] | None = None
) -> FastAPI:
    status = _Status()
    lock = asyncio.Lock()
    model = _ModelThread()

    async def call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        async with lock:
            if inspect.iscoroutinefunction(fn):
                return await fn(**kwargs)
            return await model.run(fn, **kwargs)

    async def chunks_of(fn: Callable[..., Any], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """A generator method's chunks, holding the replica for the whole stream."""
        async with lock:
            if inspect.isasyncgenfunction(fn):
                async for chunk in fn(**kwargs):
                    yield chunk
            else:
                chunks = fn(**kwargs)
                try:
                    while (chunk := await model.run(next, chunks, _END)) is not _END:
                        yield chunk
                finally:
                    await model.run(chunks.close)

    async def sse(fn: Callable[..., Any], kwargs: dict[str, Any]) -> AsyncIterator[bytes]:
        """Server-sent events as OctoAI's ``infer_stream`` reads them: ``data: <json>``, then [DONE]."""
        try:
            async for chunk in chunks_of(fn, kwargs):
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        except Exception as exc:
            traceback.print_exc()
            error = {"error": {"code": "model_error", "message": f"{type(exc).__name__}: {exc}"}}
            yield b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
            return
        yield b"data: [DONE]\n\n"

    async def load() -> None:
        try:
            await model.run(service.setup)
        except BaseException as exc:
            status.state = State.FAILED
            status.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            if on_setup_failure is not None:
                on_setup_failure(exc)
            return
        status.state = State.RUNNING
        log.info("setup complete; serving")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await run_in_threadpool(service.on_server_startup)
        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            loader.cancel()
            await run_in_threadpool(service.on_server_shutdown)

    app = _ModelServer(title=type(service).__name__, lifespan=lifespan, **_own_tracing())
    extra_schemas: dict[str, Any] = {}

    @app.get("/healthcheck")
    async def healthcheck() -> JSONResponse:
        state = status.state
        body: dict[str, Any] = {"status": str(state)}
        if state is State.RUNNING:
            return JSONResponse(body)
        if status.error:
            body["error"] = status.error
        return JSONResponse(body, status_code=503 if state is State.LOADING else 500)

    def add(path: str, fn: Callable[..., Any], model_name: str) -> None:
        Input = input_model(fn, model_name)
        schema = Input.model_json_schema(ref_template="#/components/schemas/{model}")
        defs = schema.pop("$defs", {})

        streams = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)

        async def handler(request: Request) -> Any:
            return await answer(await request.body(), request.headers.get("accept", ""))

        async def answer(raw: bytes, accept: str) -> Any:
            """The answer to a call with body ``raw``: a response, or what becomes JSON."""
            if status.state is not State.RUNNING:
                return _error(503, "not_ready", f"replica is {status.state}")
            # Any content type: callers such as `curl -d` send JSON as a form.
            try:
                payload = Input.model_validate_json(raw or b"{}")
            except ValidationError as exc:
                return _error(
                    422,
                    "invalid_input",
                    "input does not match the schema",
                    details=exc.errors(
                        include_url=False, include_context=False, include_input=False
                    ),
                )
            started = time.perf_counter()
            kwargs = {name: getattr(payload, name) for name in type(payload).model_fields}
            if streams:
                if "text/event-stream" in accept:
                    return StreamingResponse(
                        sse(fn, kwargs), media_type="text/event-stream", headers=_NO_BUFFERING
                    )
                try:
                    output = [chunk async for chunk in chunks_of(fn, kwargs)]
                except InvalidInput as exc:
                    return _error(422, "invalid_input", str(exc))
            else:
                try:
                    output = await call(fn, kwargs)
                except InvalidInput as exc:
                    return _error(422, "invalid_input", str(exc))
            elapsed = (time.perf_counter() - started) * 1000
            return {"output": output, "analytics": {"inference_time_ms": round(elapsed, 3)}}

        app.add_api_route(
            path,
            handler,
            methods=["POST"],
            name=path.strip("/") or "root",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
                # Answers as server-sent events when asked (Accept: text/event-stream).
                "x-berth-streams": streams,
            },
        )
        extra_schemas.update(defs)
        app.routes_direct[path] = answer

    add("/infer", service.infer, "InferInput")
    for path, method in public_routes(service).items():
        add(path, method, "".join(p.title() for p in path.strip("/").split("-")) + "Input")
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        spec = default_openapi()
        if extra_schemas:
            spec.setdefault("components", {}).setdefault("schemas", {}).update(extra_schemas)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app


Answerer = Callable[[bytes, str], Awaitable[Any]]
_ANY: TypeAdapter[Any] = TypeAdapter(Any)
_JSON = "application/json"


class _ModelServer(FastAPI):
    """FastAPI, with the model's routes (POST) answered without its middleware, routing
    and dependency layers: the same answers (tests/test_model_server.py checks them
    against FastAPI's own route), for about a quarter less CPU per call in a replica
    (docs/performance.md). Everything else (health, ``/docs``, other methods) is
    FastAPI's."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routes_direct: dict[str, Answerer] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            answer = self.routes_direct.get(scope["path"])
            if answer is not None:
                await _answer_directly(answer, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _answer_directly(answer: Answerer, scope: Scope, receive: Receive, send: Send) -> None:
    """One call of a model route as FastAPI would answer it: its body read whole, what
    ``answer`` returns sent as its response or as JSON, an unexpected error a 500."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the caller left before the body ended
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), "")
    started = False

    async def sending(message: Message) -> None:
        nonlocal started
        started = True
        await send(message)

    try:
        result = await answer(b"".join(chunks), accept)
        if not isinstance(result, Response):  # as FastAPI serialises a handler's ``Any``
            result = Response(_ANY.dump_json(result, by_alias=True), media_type=_JSON)
        await result(scope, receive, sending)
    except Exception:
        # As Starlette's ServerErrorMiddleware: a plain 500 if nothing was sent, and the
        # error on to the server, which logs it.
        if not started:
            await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
        raise


def _error(status_code: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status_code)


def setup_failure_exit(exc: BaseException) -> None:
    """Default in a replica process: say why on stderr and exit, so the agent can report it."""
    print(f"berth: setup() failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    sys.stderr.flush()
    import os

    os._exit(3)
