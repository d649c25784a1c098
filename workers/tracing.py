"""Tracing for Berth's processes and for the model server in replicas: W3C trace context
in, spans out over OTLP/HTTP.

On only when OTLP is configured the standard way: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), with ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_EXPORTER_OTLP_TIMEOUT``, ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``,
``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``
and ``OTEL_RESOURCE_ATTRIBUTES``. Off, nothing here runs on a request: callers test
:data:`ENABLED` first.

Berth's own spans (the API's, the agent's, the scaler's, the replica server's) are
recorded here, not by the OpenTelemetry SDK, whose span objects and encoders cost
more CPU per span than the rest of a request's path (docs/performance.md), and a
request crosses three processes. A :class:`Span` is a few slots; an exporter child
process encodes what ended as OTLP/JSON (the OTLP/HTTP JSON encoding, which
collectors, Jaeger and Tempo take) and sends it, so neither costs the event loop. In a replica
the SDK is configured too, with the replica's span as the current OpenTelemetry
context, so that a model's own spans (made with OpenTelemetry's API) nest under it.

Part of the model server (``berth build`` copies it into images); it needs only the
standard library, and OpenTelemetry for a model's own spans when it is installed.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import marshal
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from workers import span_export

__all__ = [
    "CLIENT",
    "CONSUMER",
    "ENABLED",
    "INTERNAL",
    "SERVER",
    "Span",
    "configure",
    "current",
    "current_ids",
    "enter",
    "leave",
    "parse",
    "record",
    "start",
    "traced_app",
    "use",
]

log = logging.getLogger(__name__)

ENABLED = False
# OTLP's SpanKind values
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5

_exporter: _Exporter | None = None
_sampler: Callable[[int, bool | None], bool] = lambda trace_id, parent: True  # noqa: E731
_current: contextvars.ContextVar[Span | None] = contextvars.ContextVar("berth_span", default=None)
_rng = random.Random()


class Span:
    """One span; :meth:`end` hands it to the exporter (when sampled)."""

    __slots__ = (
        "attributes",
        "end_ns",
        "events",
        "kind",
        "name",
        "parent_id",
        "sampled",
        "span_id",
        "start_ns",
        "status",
        "trace_id",
    )

    def __init__(
        self,
        name: str,
        trace_id: int,
        parent_id: int,
        kind: int,
        attributes: dict[str, Any] | None,
        start_ns: int | None,
        sampled: bool,
    ):
        self.name = name
        self.trace_id = trace_id
        self.span_id = _rng.getrandbits(64) or 1
        self.parent_id = parent_id
        self.kind = kind
        self.attributes = attributes if attributes is not None else {}
        self.start_ns = start_ns or time.time_ns()
        self.end_ns = 0
        self.events: list[tuple[str, int]] = []
        self.status: str | None = None  # an error's message; None: not an error
        self.sampled = sampled

    @property
    def traceparent(self) -> str:
        """Its W3C ``traceparent``, for the next hop."""
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{flags}"

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def add_event(self, name: str, timestamp_ns: int | None = None) -> None:
        self.events.append((name, timestamp_ns or time.time_ns()))

    def set_error(self, message: str = "") -> None:
        self.status = message

    def end(self, end_ns: int | None = None) -> None:
        self.end_ns = end_ns or time.time_ns()
        if self.sampled and _exporter is not None:
            _exporter.add(self)


def parse(traceparent: str | None) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of a W3C ``traceparent``; None if absent or malformed."""
    if not traceparent or len(traceparent) < 55:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] == "ff":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(flags & 1)


def start(
    name: str,
    parent: str | Span | None = None,
    *,
    kind: int = INTERNAL,
    attributes: dict[str, Any] | None = None,
    start_ns: int | None = None,
) -> Span:
    """A new span, the child of ``parent`` (a ``traceparent`` or a span), else of the
    current span, else the root of a new trace."""
    if parent is None:
        parent = _current.get()
    if isinstance(parent, Span):
        return Span(
            name, parent.trace_id, parent.span_id, kind, attributes, start_ns, parent.sampled
        )
    found = parse(parent)
    if found is None:
        trace_id = _rng.getrandbits(128) or 1
        return Span(name, trace_id, 0, kind, attributes, start_ns, _sampler(trace_id, None))
    trace_id, parent_id, sampled = found
    return Span(name, trace_id, parent_id, kind, attributes, start_ns, _sampler(trace_id, sampled))


@contextmanager
def use(span: Span) -> Iterator[Span]:
    """``span`` current within the block (log lines name it; new spans are its children)."""
    token = enter(span)
    try:
        yield span
    finally:
        leave(token)


def enter(span: Span) -> contextvars.Token[Span | None]:
    """``span`` current until :func:`leave` with the token (:func:`use` without a generator,
    for the paths every request takes)."""
    return _current.set(span)


def leave(token: contextvars.Token[Span | None]) -> None:
    _current.reset(token)


def current() -> Span | None:
    return _current.get()


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, as log lines carry them."""
    span = _current.get()
    if span is None:
        return None
    return f"{span.trace_id:032x}", f"{span.span_id:016x}"


def record(name: str, started: float, attributes: dict[str, Any]) -> None:
    """A span of its own that began at ``started`` (unix seconds) and ends now: a replica's
    start, a scaling decision."""
    start(name, "", attributes=attributes, start_ns=int(started * 1e9)).end()


# -- configuration -------------------------------------------------------------------------


def _env_ms(name: str, default: float) -> float:
    try:
        return max(0.001, float(os.environ[name]) / 1000)
    except (KeyError, ValueError):
        return default


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ[name]))
    except (KeyError, ValueError):
        return default


def _make_sampler() -> Callable[[int, bool | None], bool]:
    """OTEL_TRACES_SAMPLER: always_on, always_off, traceidratio and their parentbased_
    forms (the default, parentbased_always_on, follows a caller's sampled flag)."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    try:
        ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        ratio = 1.0
    bound = int(max(0.0, min(1.0, ratio)) * (1 << 64))
    base = name.removeprefix("parentbased_")

    def root(trace_id: int) -> bool:
        if base == "always_off":
            return False
        if base == "traceidratio":
            return (trace_id & ((1 << 64) - 1)) < bound
        return True

    if name.startswith("parentbased_"):
        return lambda trace_id, parent: root(trace_id) if parent is None else parent
    return lambda trace_id, parent: root(trace_id)


def _resource(service: str, extra: dict[str, str]) -> dict[str, str]:
    attributes = {}
    for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = urllib.parse.unquote(value.strip())
    attributes.update({"service.name": service, "telemetry.sdk.name": "berth", **extra})
    return attributes


def configure(service: str, **attributes: str) -> bool:
    """Export this process's spans as ``service`` if OTLP is configured; whether it is."""
    global ENABLED, _exporter, _sampler
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        base.rstrip("/") + "/v1/traces" if base else None
    )
    if not url or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return False
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol == "grpc":
        log.warning("tracing off: Berth sends OTLP over HTTP, not gRPC (set an HTTP endpoint)")
        return False
    headers = {"content-type": "application/json"}
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or os.environ.get(
        "OTEL_EXPORTER_OTLP_HEADERS", ""
    )
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            headers[key.strip().lower()] = urllib.parse.unquote(value.strip())
    _sampler = _make_sampler()
    _exporter = _Exporter(
        url,
        headers,
        _resource(service, attributes),
        delay=_env_ms("OTEL_BSP_SCHEDULE_DELAY", 5.0),
        timeout=_env_ms("OTEL_EXPORTER_OTLP_TIMEOUT", 10.0),
        queue=_env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048),
        batch=_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
    )
    ENABLED = True
    log.info("tracing: spans to %s as %s", url, service)
    return True


# -- export ----------------------------------------------------------------------------------


# The exporter child: workers/span_export.py run as a script, beside this file.
_EXPORT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "span_export.py")


class _Exporter:
    """Spans handed to a child process that encodes and sends them, so that neither the
    encoding nor the HTTP ever holds this process's GIL while its event loop waits.

    A span ends as a marshalled tuple in a bounded list; a thread writes the list every
    ``delay`` seconds (or as soon as a batch is full) to the child's stdin as one
    ``marshal`` frame, one C call and one write. The child is workers/span_export.py run
    as a script: it builds OTLP/JSON and posts it on a kept-alive connection.
    A full list drops spans (counted in the log), never blocks a request.
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        resource: dict[str, str],
        *,
        delay: float,
        timeout: float,
        queue: int,
        batch: int,
    ):
        self.url = url
        self.delay = delay
        self.limit, self.batch = queue, batch
        self.spans: list[bytes] = []  # each span marshalled
        self.dropped = 0
        self.wake = threading.Event()
        self.lock = threading.Lock()
        config = {"url": url, "headers": headers, "resource": resource, "timeout": timeout}
        self.child = subprocess.Popen(
            # -I: the script's folder (workers/, with its own http.py) not on the path
            [sys.executable, "-I", _EXPORT_SCRIPT, span_export.FLAG],
            stdin=subprocess.PIPE,
            env={**os.environ, span_export.CONFIG_ENV: json.dumps(config)},
        )
        self.pipe = self.child.stdin
        threading.Thread(target=self._run, name="berth-span-export", daemon=True).start()
        atexit.register(self.close)

    def add(self, span: Span) -> None:
        if len(self.spans) >= self.limit:
            self.dropped += 1
            return
        record = (
            span.trace_id,
            span.span_id,
            span.parent_id,
            span.name,
            span.kind,
            span.start_ns,
            span.end_ns,
            span.attributes,
            span.events,
            span.status,
        )
        # Marshalled now: the span's dicts and lists die here, and what waits for the next
        # batch is one bytes object the garbage collector never visits.
        try:
            blob = marshal.dumps(record)
        except ValueError:  # an attribute of a type marshal does not take: as text
            plain = {k: _plain(v) for k, v in span.attributes.items()}
            blob = marshal.dumps((*record[:7], plain, *record[8:]))
        self.spans.append(blob)  # list.append is atomic under the GIL
        if len(self.spans) >= self.batch:
            self.wake.set()

    def _run(self) -> None:
        while self.pipe is not None:
            self.wake.wait(self.delay)
            self.wake.clear()
            self.flush()

    def flush(self) -> None:
        with self.lock:
            while self.spans and self.pipe is not None:
                taken, self.spans = self.spans[: self.batch], self.spans[self.batch :]
                self._write(taken)
            if self.dropped:
                log.warning("tracing: %d span(s) dropped, the export queue was full", self.dropped)
                self.dropped = 0

    def _write(self, spans: list[bytes]) -> None:
        frame = marshal.dumps(spans)  # a list of marshalled spans
        try:
            assert self.pipe is not None
            self.pipe.write(len(frame).to_bytes(4, "little") + frame)
            self.pipe.flush()
        except (OSError, ValueError) as exc:  # the exporter died: tracing stops here
            log.warning("tracing: the span exporter is gone (%s); spans are dropped", exc)
            self.pipe = None

    def close(self) -> None:
        """Send what is left and let the child finish its last post (bounded)."""
        self.flush()
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.child.wait(timeout=5)


def _plain(v: Any) -> Any:
    return v if type(v) in (str, bool, int, float) else str(v)


# -- the model server ------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _model_spans(service: str) -> Callable[[Span], Any] | None:
    """OpenTelemetry's SDK for a model's own spans, if installed: a function that makes a
    span of ours the current OpenTelemetry context (None without the SDK)."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    except ImportError:
        return None
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    except Exception as exc:  # a bad OTEL_* value: the model runs, its own spans do not
        log.warning("a model's own spans are off: the OpenTelemetry SDK refused: %s", exc)
        return None
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)

    def enter(span: Span) -> Any:
        ctx = SpanContext(
            span.trace_id,
            span.span_id,
            is_remote=False,
            trace_flags=TraceFlags(1 if span.sampled else 0),
        )
        return context.attach(trace.set_span_in_context(NonRecordingSpan(ctx)))

    enter.detach = context.detach  # type: ignore[attr-defined]
    return enter


def traced_app(app: App, service: str = "berth-replica") -> App:
    """The model server with a SERVER span per request (health checks left out), child of
    the ``traceparent`` the agent sends; a model's own OpenTelemetry spans nest under it."""
    replica = os.environ.get("OCTOAI_REPLICA_NAME", "")
    enter = _model_spans(service)

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthcheck":
            await app(scope, receive, send)
            return
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), None
        )
        method, path = scope["method"], scope["path"]
        span = start(
            f"{method} {path}",
            incoming or "",
            kind=SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "http.route": path,
                "berth.replica": replica,
            },
        )

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                code = message["status"]
                span.attributes["http.response.status_code"] = code
                if code >= 500:
                    span.set_error()
            await send(message)

        otel = enter(span) if enter is not None else None
        token = _current.set(span)
        try:
            await app(scope, receive, sending)
        except BaseException as exc:
            span.set_error(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            _current.reset(token)
            if otel is not None:
                enter.detach(otel)  # type: ignore[union-attr]
            span.end()

    return wrapped
