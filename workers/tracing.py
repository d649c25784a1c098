"""OpenTelemetry tracing for Berth's processes and for the model server in replicas.

On only when OTLP is configured the standard way: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), with ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_BSP_*`` and
``OTEL_RESOURCE_ATTRIBUTES`` read by the SDK itself. Off, nothing here runs on a
request: callers test :data:`ENABLED` first. Spans go out over OTLP/HTTP
(protobuf); ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` is refused with a warning.

Part of the model server (``berth build`` copies it into images): it imports
OpenTelemetry only when tracing is configured, and a replica without it runs
untraced.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ENABLED", "configure", "current", "parent", "traced_app", "traceparent", "tracer"]

log = logging.getLogger(__name__)

ENABLED = False
_tracer: Any = None


def configure(service: str, **attributes: str) -> bool:
    """Export this process's spans as ``service`` if OTLP is configured; whether it is."""
    global ENABLED, _tracer
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return False
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        log.warning("tracing off: Berth exports OTLP over http/protobuf, not %s", protocol)
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("tracing off: OpenTelemetry is not installed here (%s)", exc)
        return False
    resource = Resource.create({"service.name": service, **attributes})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # what is batched still goes out at exit
    _tracer = trace.get_tracer("berth")
    ENABLED = True
    log.info("tracing: spans to %s as %s", endpoint, service)
    return True


def tracer() -> Any:
    return _tracer


def record(name: str, started: float, attributes: dict[str, Any]) -> None:
    """A span of its own that began at ``started`` (unix seconds) and ends now: a replica's
    start, a scaling decision."""
    _tracer.start_span(name, start_time=int(started * 1e9), attributes=attributes).end()


def parent(value: str | None) -> Any:
    """The context a W3C ``traceparent`` names (None: a new trace)."""
    if not value:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": value})


def current() -> str | None:
    """The ``traceparent`` of the span current here, if any."""
    from opentelemetry import trace

    span = trace.get_current_span()
    return traceparent(span) if span.get_span_context().is_valid else None


def traceparent(span: Any) -> str:
    """The W3C ``traceparent`` of ``span``, for the next hop."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def traced_app(app: App) -> App:
    """The model server with a SERVER span per request (health checks left out), child of
    the ``traceparent`` the agent sends: the model's own spans nest under it."""
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    replica = os.environ.get("OCTOAI_REPLICA_NAME", "")

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthcheck":
            await app(scope, receive, send)
            return
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), None
        )
        method, path = scope["method"], scope["path"]
        span = _tracer.start_span(
            f"{method} {path}",
            context=parent(incoming),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "http.route": path,
                "berth.replica": replica,
            },
        )
        token = context.attach(trace.set_span_in_context(span))

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                code = message["status"]
                span.set_attribute("http.response.status_code", code)
                if code >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        try:
            await app(scope, receive, sending)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            context.detach(token)
            span.end()

    return wrapped
