"""The span exporter on its own: spans marshalled as they end go through the exporter
child to an OTLP/HTTP receiver as OTLP/JSON, an attribute marshal cannot take as text."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import wait_for
from workers import span_export, tracing


def test_spans_reach_the_collector_as_otlp_json() -> None:
    bodies: list[dict[str, Any]] = []

    class Collector(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    exporter = tracing._Exporter(
        f"http://127.0.0.1:{server.server_port}/v1/traces",
        {"content-type": "application/json"},
        {"service.name": "test"},
        delay=0.05,
        timeout=5,
        queue=100,
        batch=10,
    )
    try:
        parent = tracing.Span("parent", 7, 0, tracing.SERVER, {"n": 1}, None, True)
        child = tracing.Span(
            "child", 7, parent.span_id, tracing.INTERNAL,
            {"ok": True, "x": 1.5, "path": Path("/a"), "d": Decimal("2.5")}, None, True,
        )  # fmt: skip
        child.add_event("halfway")
        child.set_error("boom")
        for span in (child, parent):
            span.end_ns = span.start_ns + 1000
            exporter.add(span)
        spans = wait_for(
            lambda: [s for b in bodies for r in b["resourceSpans"] for ss in r["scopeSpans"]
                     for s in ss["spans"]] or None,
            10, "the spans at the collector",
        )  # fmt: skip
    finally:
        exporter.close()
        server.shutdown()
        server.server_close()
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"parent", "child"}
    assert by_name["child"]["parentSpanId"] == f"{parent.span_id:016x}"
    assert by_name["child"]["traceId"] == f"{7:032x}"
    attrs = {a["key"]: a["value"] for a in by_name["child"]["attributes"]}
    assert attrs == {
        "ok": {"boolValue": True},
        "x": {"doubleValue": 1.5},
        "path": {"stringValue": "/a"},
        "d": {"stringValue": "2.5"},
    }
    assert by_name["child"]["events"][0]["name"] == "halfway"
    assert by_name["child"]["status"] == {"code": 2, "message": "boom"}
    assert bodies[0]["resourceSpans"][0]["resource"]["attributes"] == [
        {"key": "service.name", "value": {"stringValue": "test"}}
    ]


def test_kept_attributes_keep_their_types() -> None:
    """Attributes are kept by key, type and value: True, 1 and 1.0 are equal in Python
    but three different OTLP values, whichever comes first."""
    spans = [
        (1, 2, 0, "s", 1, 10, 20, {"k": value, "fixed": "same"}, [], None)
        for value in (True, 1, 1.0, "1", [1], 1, True)
    ]
    values = [json.loads(span_export.encode(s))["attributes"][0]["value"] for s in spans]
    assert values == [
        {"boolValue": True},
        {"intValue": "1"},
        {"doubleValue": 1.0},
        {"stringValue": "1"},
        {"stringValue": "[1]"},
        {"intValue": "1"},
        {"boolValue": True},
    ]


def test_the_kept_texts_start_again_when_values_that_vary_fill_them() -> None:
    """Request ids fill the caches; a full one empties, so an endpoint that first appears
    after thousands of requests is kept too, and every span still encodes the same."""

    def span(rid: str, endpoint: str) -> tuple[Any, ...]:
        attrs = {"berth.request_id": rid, "berth.endpoint": endpoint}
        return (1, 2, 0, f"queue {endpoint}", 1, 10, 20, attrs, [], None)

    for i in range(2 * span_export._ESCAPED_MAX + 10):
        span_export.encode(span(f"rid-{i}", "early"))
    assert len(span_export._PAIRS) <= span_export._ESCAPED_MAX
    assert len(span_export._ESCAPED) <= span_export._ESCAPED_MAX
    late = json.loads(span_export.encode(span("rid-late", "late")))
    assert late["attributes"] == [
        {"key": "berth.request_id", "value": {"stringValue": "rid-late"}},
        {"key": "berth.endpoint", "value": {"stringValue": "late"}},
    ]
    assert late["name"] == "queue late"
    assert ("berth.endpoint", str, "late") in span_export._PAIRS
    assert "queue late" in span_export._ESCAPED
