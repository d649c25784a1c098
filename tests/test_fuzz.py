"""Schemathesis against Berth's own OpenAPI document, on a real stack.

Every operation, the data plane's included (against a deployed echo model), gets
generated input, valid and not: Berth answers each within the time limit, never
with a server error of its own, with a status its document names, in the shape and
content type the document gives. Bounded: a fixed number of examples per operation.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import FAST, NatsServer, Stack, wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = 25
# Every answer comes within this (the data plane's endpoint times out at 5 s).
ANSWER_WITHIN = 15.0
ENDPOINT = "fuzzed"


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nats = NatsServer(tmp_path_factory.mktemp("fuzz-nats")).start()
    stack = Stack(tmp_path_factory.mktemp("fuzz") / "berth", nats.url, env=FAST)
    try:
        stack.start()
        stack.deploy(ENDPOINT, "echo", min_replicas=1, request_timeout=5, scale_to_zero=600)
        wait_for(
            lambda: any(r["status"] == "running" for r in stack.replicas(ENDPOINT)),
            60,
            "the echo replica",
        )
        yield stack
    finally:
        stack.close()
        nats.stop()


MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# Where a generated URL that would leave the machine is sent instead: loopback, a port
# nothing listens on (the discard port), so the fetch or delivery fails at once.
CONTAINED = "http://127.0.0.1:9/fuzzed"


def _contained(value: Any) -> Any:
    """``value`` with every http(s) URL in it that names a host other than loopback
    replaced by CONTAINED: an asset ``url`` or a callback the generator happens to make
    valid and public is never fetched or called outside this machine."""
    if isinstance(value, str):
        if value.lower().startswith(("http://", "https://")):
            try:
                host = urllib.parse.urlsplit(value).hostname
            except ValueError:
                return value  # not a URL Berth would take either
            if host not in ("127.0.0.1", "localhost", "::1"):
                return CONTAINED
        return value
    if isinstance(value, dict):
        return {k: _contained(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_contained(v) for v in value]
    return value


def _answer(case: Any, stack: Stack) -> None:
    """Call one generated case; fail on no answer in time or on a failed check."""
    for part in ("body", "query", "headers"):
        value = getattr(case, part, None)
        if isinstance(value, (dict, list, str)):
            setattr(case, part, _contained(value))
    headers = {"Authorization": f"Bearer {stack.token}"}
    try:
        if case.path.endswith("/stream"):
            # A live stream never ends: its status and first line must come, the line JSON.
            kwargs = case.as_transport_kwargs(base_url=stack.url, headers=headers)
            with requests.request(**kwargs, timeout=ANSWER_WITHIN, stream=True) as raw:
                if raw.status_code == 200:
                    first = next(raw.iter_lines(), b"")
                    assert isinstance(json.loads(first), dict), first
                    return
        response = case.call(base_url=stack.url, headers=headers, timeout=ANSWER_WITHIN)
    except requests.Timeout:
        raise AssertionError(f"no answer within {ANSWER_WITHIN} s") from None
    if case.path.startswith("/e/") and "x-berth-replica" in response.headers:
        return  # the model's own answer passes through as it is: any status, any shape
    case.validate_response(response, checks=CHECKS)


def test_every_operation_answers_as_documented(fuzz_stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.url}/openapi.json")
    failures: list[str] = []
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        fixed = {"endpoint_name": ENDPOINT} if operation.path.startswith("/e/") else None
        for mode in MODES:
            strategy = operation.as_strategy(mode, path_parameters=fixed)

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                nonlocal tried
                tried += 1
                try:
                    _answer(case, fuzz_stack)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{case.as_curl_command()}") from None

            try:
                run()
            except Unsatisfiable:  # no invalid input exists (no parameters, any string)
                continue
            except Exception as exc:  # the first failing case of this operation and mode
                failures.append(
                    f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"
                )
    assert tried >= 35 * EXAMPLES, tried
    assert not failures, "\n\n".join(failures)


def test_generated_urls_never_leave_the_machine() -> None:
    assert _contained({"url": "https://A.example/x", "n": [1, "http://8.8.8.8:80/"]}) == {
        "url": CONTAINED,
        "n": [1, CONTAINED],
    }
    assert _contained("http://127.0.0.1:5/cb") == "http://127.0.0.1:5/cb"
    assert _contained("https://[::1]/cb") == "https://[::1]/cb"
    assert _contained("not a url") == "not a url"


def test_the_document_names_berths_own_error_statuses(fuzz_stack: Stack) -> None:
    doc = requests.get(f"{fuzz_stack.url}/openapi.json", timeout=10).json()
    paths = doc["paths"]
    assert {"401", "403", "404", "422"} <= set(
        paths["/v1/endpoint/{endpoint_name}"]["delete"]["responses"]
    )
    assert "409" in paths["/v1/endpoint"]["post"]["responses"]
    assert "413" in paths["/v1/models"]["post"]["responses"]
    infer = paths["/e/{endpoint_name}/{route}"]["post"]["responses"]
    assert {"202", "413", "422", "429", "431", "503", "504"} <= set(infer)
    error = doc["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]


def test_405_names_every_method_of_the_path(fuzz_stack: Stack) -> None:
    with fuzz_stack.client() as c:
        resp = c.request("PUT", "/v1/endpoint/nope")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, PATCH, DELETE"
    assert resp.json()["error"]["code"] == "method_not_allowed"
