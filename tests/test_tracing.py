"""Traces across Berth's processes, received by a real OTLP/HTTP endpoint run here (the
protobuf messages of ``opentelemetry-proto``): one trace per request from the caller's
``traceparent`` through the API, the queue, the agent and the replica to the model's own
spans; a cold start in the queue span; a job's result store and callback attempts."""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import FAST, NatsServer, Stack, wait_for

pytestmark = pytest.mark.e2e


@dataclass
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    events: list[str] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


class Receiver:
    """An OTLP/HTTP traces endpoint: POST /v1/traces, protobuf in, spans kept."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.callbacks: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == "/v1/traces":
                    if self.headers.get("content-type", "").startswith("application/json"):
                        receiver.take_json(body)  # Berth's own spans: OTLP/JSON
                    else:
                        receiver.take(body)  # the OpenTelemetry SDK's (a model's): protobuf
                    answer = ExportTraceServiceResponse().SerializeToString()
                    self.send_response(200)
                    self.send_header("content-type", "application/x-protobuf")
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                receiver.callbacks.append(dict(self.headers))  # a job's callback
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            events=[e.name for e in s.events],
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )

    def take_json(self, body: bytes) -> None:
        def value(v: dict[str, Any]) -> Any:
            ((kind, raw),) = v.items()
            return int(raw) if kind == "intValue" else raw

        for rs in json.loads(body)["resourceSpans"]:
            resource = {a["key"]: value(a["value"]) for a in rs["resource"]["attributes"]}
            for ss in rs["scopeSpans"]:
                for s in ss["spans"]:
                    self.spans.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=s["name"],
                            kind=s["kind"],
                            trace_id=s["traceId"],
                            span_id=s["spanId"],
                            parent=s.get("parentSpanId", ""),
                            attributes={a["key"]: value(a["value"]) for a in s["attributes"]},
                            events=[e["name"] for e in s.get("events", [])],
                            start_ns=int(s["startTimeUnixNano"]),
                            end_ns=int(s["endTimeUnixNano"]),
                        )
                    )

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# OTLP's SpanKind values
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def traced_stack(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nats = NatsServer(tmp_path_factory.mktemp("trace-nats")).start()
    env = {
        **FAST,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "BERTH_LOG_FORMAT": "json",
    }
    stack = Stack(tmp_path_factory.mktemp("traced") / "berth", nats.url, env=env)
    try:
        stack.start()
        yield stack
    finally:
        stack.close()
        nats.stop()


def one(spans: list[Span], **match: Any) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.service, s.name) for s in spans])
    return found[0]


def test_a_sync_request_is_one_trace_from_the_caller_to_the_models_own_span(
    traced_stack: Stack, receiver: Receiver
) -> None:
    name = "traced-sync"
    traced_stack.deploy(name, "traced", min_replicas=0, max_replicas=1)
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    with traced_stack.client() as c:
        resp = c.post(
            f"/e/{name}/infer",
            json={"prompt": "hello"},
            headers={"traceparent": f"00-{trace_id}-{caller}-01"},
        )
    assert resp.status_code == 200, resp.text

    def whole() -> list[Span] | None:
        # Every span this test reads: each process exports its own batches, and a parent
        # ends (and leaves) after its children, so one batch's arrival says nothing of
        # another's.
        spans = receiver.trace(trace_id)
        seen = {(s.service, s.kind) for s in spans} | {(s.service, s.name) for s in spans}
        wanted = {
            ("berth-api", SERVER),
            ("berth-agent", f"queue {name}"),
            ("berth-agent", CONSUMER),
            ("berth-replica", SERVER),
            ("berth-replica", "model work"),
        }
        return spans if wanted <= seen else None

    spans = wait_for(whole, 30, "the trace from every process")
    api = one(spans, service="berth-api", kind=SERVER)
    assert api.parent == caller  # the caller's trace goes on
    assert api.name == "POST /e/{endpoint_name}/{route}"
    assert api.attributes["http.response.status_code"] == 200
    assert api.attributes["berth.endpoint"] == name
    assert api.attributes["berth.request_id"] == resp.headers["x-user-request-id"]

    queue = one(spans, service="berth-agent", name=f"queue {name}")
    process = one(spans, service="berth-agent", kind=CONSUMER)
    assert queue.parent == api.span_id and process.parent == api.span_id
    assert process.name.startswith("process ") and process.attributes["messaging.system"] == "nats"
    assert process.attributes["berth.attempt"] == 1
    assert process.attributes["http.response.status_code"] == 200
    # Its first request started the replica: the wait is a cold start, with its events.
    assert queue.attributes["berth.cold_start"] is True
    assert "replica ready" in queue.events
    # The wait ends where the processing starts, and the process span says it too.
    assert queue.end_ns == process.start_ns
    waited = process.attributes["berth.queue_wait_ms"]
    assert abs(waited - (queue.end_ns - queue.start_ns) / 1e6) < 0.01

    replica = one(spans, service="berth-replica", kind=SERVER)
    assert replica.parent == process.span_id and replica.name == "POST /infer"
    work = one(spans, name="model work")
    assert work.parent == replica.span_id and work.attributes["model.prompt_length"] == 5

    # A second request: warm, no cold start.
    trace_2 = secrets.token_hex(16)
    with traced_stack.client() as c:
        c.post(
            f"/e/{name}/infer",
            json={"prompt": "again"},
            headers={"traceparent": f"00-{trace_2}-{secrets.token_hex(8)}-01"},
        )
    warm = wait_for(
        lambda: next((s for s in receiver.trace(trace_2) if s.kind == CONSUMER), None),
        30,
        "the second process span",
    )
    # A warm wait is the process span's attribute; a span of its own only from a
    # millisecond on (the agent exports its queue span before its process span).
    waited = warm.attributes["berth.queue_wait_ms"]
    assert isinstance(waited, float) and waited >= 0
    queued = [s for s in receiver.trace(trace_2) if s.name == f"queue {name}"]
    if waited < 1:
        assert queued == []
    else:
        assert [s.attributes["berth.cold_start"] for s in queued] == [False]


def test_a_job_keeps_its_trace_through_its_result_and_callback(
    traced_stack: Stack, receiver: Receiver
) -> None:
    name = "traced-job"
    traced_stack.deploy(name, "traced", min_replicas=1, max_replicas=1)
    with traced_stack.client() as c:
        resp = c.post(
            f"/e/{name}/infer",
            json={"prompt": "job"},
            headers={"X-OctoAI-Async": "1", "X-Berth-Callback-Url": f"{receiver.url}/hook"},
        )
        assert resp.status_code == 202
        job_id = resp.json()["response_id"]
        state = wait_for(
            lambda: (
                (j := c.get(f"/v1/requests/{job_id}").json())
                and j.get("callback", {}).get("state") == "delivered"
                and j
            ),
            60,
            "the job's callback delivered",
        )
    trace_id = state["trace_id"]  # in the job record
    spans = wait_for(
        lambda: (
            (s := receiver.trace(trace_id))
            and any(x.name == "POST" and x.kind == CLIENT for x in s)
            and any(x.name == "store result" for x in s)
            and any(x.kind == CONSUMER for x in s)  # ends after its child, store result
            and any(x.service == "berth-api" and x.kind == SERVER for x in s)
            and s
        ),
        30,
        "the job's spans",
    )
    api = one(spans, service="berth-api", kind=SERVER)
    assert api.parent == ""  # no caller trace: the API's span is the root
    assert api.attributes["http.response.status_code"] == 202
    assert "berth.queue_position" in api.attributes
    process = one(spans, kind=CONSUMER)
    store = one(spans, name="store result")
    assert store.parent == process.span_id
    attempt = one(spans, name="POST", kind=CLIENT)
    assert attempt.parent == api.span_id
    assert attempt.attributes["berth.attempt"] == 1
    assert attempt.attributes["http.response.status_code"] == 204
    # The receiver was told the trace: its own spans may join.
    assert any(trace_id in h.get("traceparent", "") for h in receiver.callbacks)


def test_scaling_decisions_and_replica_starts_are_spans(
    traced_stack: Stack, receiver: Receiver
) -> None:
    wait_for(
        lambda: (
            any(
                s.service == "berth-scaler" and s.name == "scale traced-job" for s in receiver.spans
            )
            and any(s.name == "replica start" for s in receiver.spans)
        ),
        30,
        "a scaling span and a replica start span",
    )
    decision = next(s for s in receiver.spans if s.name == "scale traced-job")
    assert decision.attributes["berth.scale.kind"] == "min_replicas"
    assert "scale up" in decision.attributes["berth.scale.reason"]
    start = next(s for s in receiver.spans if s.name == "replica start")
    assert start.service == "berth-agent" and start.attributes["berth.endpoint"]


def test_log_lines_carry_the_trace(traced_stack: Stack) -> None:
    """JSON logs (BERTH_LOG_FORMAT=json): each a JSON object; those written inside a
    request's span name its trace."""
    lines = [
        json.loads(line)
        for line in Path(traced_stack.logs["api"]).read_text().splitlines()
        if line.startswith("{")
    ]
    assert lines and all({"time", "level", "process", "logger", "message"} <= set(x) for x in lines)
    assert any("trace_id" in x for x in lines), "no API log line inside a trace"


def test_the_json_formatter_names_the_current_span(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.runner import JsonLines
    from workers import tracing

    monkeypatch.setattr(tracing, "ENABLED", True)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    span = tracing.start("s", "")
    with tracing.use(span):
        line = json.loads(JsonLines("api").format(record))
    assert line["message"] == "hello there" and line["process"] == "api"
    assert line["trace_id"] == f"{span.trace_id:032x}" and line["span_id"] == f"{span.span_id:016x}"
    outside = json.loads(JsonLines("api").format(record))
    assert "trace_id" not in outside


def test_traceparent_parsing_and_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import tracing

    tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert tracing.parse(f"00-{tid}-{sid}-01") == (int(tid, 16), int(sid, 16), True)
    assert tracing.parse(f"00-{tid}-{sid}-00") == (int(tid, 16), int(sid, 16), False)
    for bad in (
        "",
        "nonsense",
        f"00-{'0' * 32}-{sid}-01",
        f"ff-{tid}-{sid}-01",
        f"00-{tid}-xyz-01",
    ):
        assert tracing.parse(bad) is None, bad
    child = tracing.start("c", f"00-{tid}-{sid}-01")
    assert (child.trace_id, child.parent_id) == (int(tid, 16), int(sid, 16))
    assert child.traceparent.startswith(f"00-{tid}-") and child.traceparent.endswith("-01")
    grandchild = tracing.start("g", child)
    assert grandchild.parent_id == child.span_id and grandchild.trace_id == child.trace_id

    # The default sampler follows the caller's flag; a ratio of 0 samples no new trace.
    monkeypatch.setattr(tracing, "_sampler", tracing._make_sampler())
    assert tracing.start("x", f"00-{tid}-{sid}-00").sampled is False
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    monkeypatch.setattr(tracing, "_sampler", tracing._make_sampler())
    assert not any(tracing.start("x", "").sampled for _ in range(50))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1")
    monkeypatch.setattr(tracing, "_sampler", tracing._make_sampler())
    assert all(tracing.start("x", "").sampled for _ in range(50))
