"""The OpenAPI document: what every operation really answers, errors included.

FastAPI lists an operation's success and, where it validates input, a 422 in its own
shape. Berth answers every error as ``{"error": {"code", "message", "details"}}``
(api/errors.py) and with more statuses than that; the document says so, by rule:

- every operation: 422 (invalid input) and 400 (a body that is not JSON, for those
  that take one), in Berth's error shape;
- every ``/v1`` operation: 401 (no or unknown token) and 403 (a token without the
  scope);
- every operation with a path parameter: 404 (no such object, or not yours);
- what a route names itself (``responses=errors(409)``, say).

The data plane (``/e/{endpoint_name}/{route}``) is served beside FastAPI
(api/routes/inference.py), so its operations are written here by hand.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

__all__ = ["ErrorBody", "errors", "install_openapi"]

# What each status means for a caller, wherever it appears.
_MEANING = {
    400: "The body is not what the operation reads (not JSON, not UTF-8)",
    401: "No token, or one that is unknown, expired or deleted",
    403: "The token lacks the scope, or may not use this endpoint",
    404: "No such object (or not the caller's: another token's job is not found either)",
    409: "Conflicts with the current state (exists already, has ended, is in use)",
    413: "The body, or what an archive unpacks to, is over the limit",
    422: "Invalid input; `details` lists each problem with its location",
    429: "The endpoint's queue is full (max_queue_length); try again later",
    431: "The request's headers are over the limit JetStream can carry",
    502: "The replica failed while handling the request",
    503: "The endpoint is disabled or failing to start, or NATS is unreachable",
    504: "No answer within the request's timeout or deadline",
}


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """Every error Berth answers: a stable machine-readable code and a message."""

    error: ErrorDetail


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with Berth's error shape."""
    return {s: {"model": ErrorBody, "description": _MEANING[s]} for s in statuses}


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _MEANING[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


def _data_plane() -> dict[str, Any]:
    """The data plane's operations: any route of the endpoint's model, sync or async."""
    params = [
        {"name": "endpoint_name", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "route",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "The model's own route (`infer`, `predict`, `healthcheck`, ...)",
        },
        {
            "name": "X-OctoAI-Async",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "enum": ["0", "1"]},
            "description": "1: answer 202 with a response_id at once (a job)",
        },
        {
            "name": "X-Berth-Deadline",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "Unix time or RFC 3339 after which the request is not run",
        },
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 255},
        },
    ]
    answers: dict[str, Any] = {
        "200": {"description": "The replica's own answer (its status, headers and body)"},
        "202": {
            "description": "Accepted as a job: poll `poll_url` or wait for the callback",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "response_id": {"type": "string"},
                            "poll_url": {"type": "string"},
                        },
                    }
                }
            },
        },
    }
    for status in (401, 403, 404, 413, 422, 429, 431, 502, 503, 504):
        answers[str(status)] = _error_response(status)

    def op(method: str) -> dict[str, Any]:
        body: dict[str, Any] = (
            {"requestBody": {"content": {"application/json": {"schema": {}}}}}
            if method == "post"
            else {}
        )
        return {
            "tags": ["inference"],
            "summary": f"{method.upper()} to the endpoint's model",
            "operationId": f"infer_{method}",
            "parameters": params,
            "responses": answers,
            **body,
        }

    return {"/e/{endpoint_name}/{route}": {"post": op("post"), "get": op("get")}}


def build(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schemas["ErrorBody"].pop("$defs", {}))
    # FastAPI's own 422 shape is never answered: every 422 is an ErrorBody.
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            needed = {422}
            if "requestBody" in op:
                needed.add(400)
            if path.startswith("/v1/"):
                needed |= {401, 403}
            if "{" in path:
                needed.add(404)
            for status in needed:
                responses[str(status)] = _error_response(status)
    schema["paths"].update(_data_plane())
    app.openapi_schema = schema
    return schema


def install_openapi(app: FastAPI) -> None:
    app.openapi = lambda: build(app)  # type: ignore[method-assign]
