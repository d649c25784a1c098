"""The span exporter child: Berth's spans from its parent's stdin, OTLP/JSON out over HTTP.

Run as a script by workers/tracing.py (``python -I span_export.py --berth-span-export``,
the flag naming the process for anyone reading a process list): each frame on stdin is
a 4-byte length and a ``marshal``-ed list of marshalled span tuples; each becomes one
OTLP/HTTP JSON post on a kept-alive connection. The encoding and the HTTP run here, so
neither holds the parent's GIL while its event loop waits. Standard library only, with
orjson when installed (part of the model server: ``berth build`` copies it into images).
"""

from __future__ import annotations

import http.client
import json
import logging
import marshal
import os
import sys
import urllib.parse
from typing import Any

__all__ = ["CONFIG_ENV", "FLAG", "Sender", "encode", "main"]

log = logging.getLogger("workers.span_export")

FLAG = "--berth-span-export"

# JSON text of the strings spans repeat (attribute keys, span names, routes, endpoint
# names): escaped once. Bounded: values that vary (request ids) fill it, and a full
# cache starts again empty, so that what repeats, including what first appears late (a
# new endpoint), is kept again at once.
_ESCAPED: dict[str, str] = {}
_ESCAPED_MAX = 4096


def _esc(text: str) -> str:
    """``text`` as a JSON string."""
    found = _ESCAPED.get(text)
    return found if found is not None else _keep(_ESCAPED, text, dumps(text).decode())


def _keep(cache: dict[Any, str], key: Any, text: str) -> str:
    """``text``, kept in ``cache`` under ``key``; a full cache is full of values that
    varied, and starts again empty: what repeats comes back at once."""
    if len(cache) >= _ESCAPED_MAX:
        cache.clear()
    cache[key] = text
    return text


# Whole attributes, by key, type and value: most repeat from span to span (the
# endpoint, the replica, the route, the messaging system). Bounded like _ESCAPED.
_PAIRS: dict[tuple[str, type, Any], str] = {}


def _attribute_kept(key: str, v: Any) -> str:
    """``_attribute``'s text, kept for the pairs that repeat."""
    pair = (key, type(v), v)  # the type too: True, 1 and 1.0 are equal keys
    try:
        found = _PAIRS.get(pair)
    except TypeError:  # a value that does not hash
        return _attribute(key, v)
    return found if found is not None else _keep(_PAIRS, pair, _attribute(key, v))


def _attribute(key: str, v: Any) -> str:
    kind = type(v)
    if kind is str:
        return f'{{"key":{_esc(key)},"value":{{"stringValue":{_esc(v)}}}}}'
    if kind is bool:
        return f'{{"key":{_esc(key)},"value":{{"boolValue":{"true" if v else "false"}}}}}'
    if kind is int:
        return f'{{"key":{_esc(key)},"value":{{"intValue":"{v}"}}}}'
    if kind is float:
        return f'{{"key":{_esc(key)},"value":{{"doubleValue":{dumps(v).decode()}}}}}'
    return f'{{"key":{_esc(key)},"value":{{"stringValue":{_esc(str(v))}}}}}'


def encode(span: tuple[Any, ...]) -> str:
    """One span as OTLP/JSON text, written directly (a dict per attribute and a dumps of
    the whole took half as long again)."""
    trace_id, span_id, parent_id, name, kind, start_ns, end_ns, attributes, events, status = span
    attrs = ",".join([_attribute_kept(k, v) for k, v in attributes.items()])
    out = (
        f'{{"traceId":"{trace_id:032x}","spanId":"{span_id:016x}","name":{_esc(name)},'
        f'"kind":{kind},"startTimeUnixNano":"{start_ns}","endTimeUnixNano":"{end_ns}",'
        f'"attributes":[{attrs}]'
    )
    if parent_id:
        out += f',"parentSpanId":"{parent_id:016x}"'
    if events:
        marks = ",".join([f'{{"name":{_esc(n)},"timeUnixNano":"{t}"}}' for n, t in events])
        out += f',"events":[{marks}]'
    if status is not None:
        out += f',"status":{{"code":2,"message":{_esc(status)}}}'
    return out + "}"


def dumps(value: Any) -> bytes:
    """orjson when installed (a third of json's time per span); json in an image without it."""
    if _orjson is not None:
        return bytes(_orjson.dumps(value))
    return json.dumps(value).encode()


_orjson: Any
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - the model server's images
    _orjson = None


CONFIG_ENV = "BERTH_SPAN_EXPORT"  # the exporter's configuration, as JSON


class Sender:
    """The child's side: spans from frames, OTLP/JSON out over HTTP."""

    def __init__(self, config: dict[str, Any]):
        self.url = config["url"]
        parts = urllib.parse.urlsplit(self.url)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = config["headers"]
        self.timeout = config["timeout"]
        resource = config["resource"]
        self.resource = dumps(
            [{"key": k, "value": {"stringValue": v}} for k, v in resource.items()]
        ).decode()
        # One kept-alive connection to the collector (a new one per batch cost a tenth
        # of the agent's CPU under load).
        self.conn: http.client.HTTPConnection | None = None

    def send(self, spans: list[tuple[Any, ...]]) -> None:
        data = (
            f'{{"resourceSpans":[{{"resource":{{"attributes":{self.resource}}},'
            f'"scopeSpans":[{{"scope":{{"name":"berth"}},"spans":['
            + ",".join([encode(s) for s in spans])
            + "]}]}]}"
        ).encode()
        for attempt in (1, 2):  # a kept connection the collector closed: once more, anew
            try:
                if self.conn is None:
                    self.conn = self._connect()
                self.conn.request("POST", self.path, body=data, headers=self.headers)
                resp = self.conn.getresponse()
                resp.read()
                if resp.status >= 400:
                    log.warning(
                        "tracing: the collector refused %d span(s): %d", len(spans), resp.status
                    )
                return
            except (OSError, http.client.HTTPException) as exc:
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                if attempt == 2:  # the collector is away: these spans are lost, not retried
                    log.warning("tracing: %d span(s) not exported: %s", len(spans), exc)

    def _connect(self) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(self.url)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        return kind(parts.hostname or "localhost", parts.port, timeout=self.timeout)


def main() -> None:
    """The exporter child: frames from stdin until it closes, each posted as one batch."""
    logging.basicConfig(level="WARNING", format="%(asctime)s span-export %(message)s")
    sender = Sender(json.loads(os.environ[CONFIG_ENV]))
    stdin = sys.stdin.buffer
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return  # the parent closed the pipe (or exited): everything it sent is sent
        frame = stdin.read(int.from_bytes(head, "little"))
        sender.send([marshal.loads(blob) for blob in marshal.loads(frame)])


if __name__ == "__main__":
    main()
