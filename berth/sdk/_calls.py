"""Every API call the SDK makes, described once (a :class:`~berth.sdk._core.Call`) for both
clients to carry out."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter

from berth.sdk._core import (
    UPLOAD_CHUNK,
    Call,
    Settings,
    check,
    json_or_text,
    new_idempotency_key,
)
from berth.sdk.errors import Unprocessable
from berth.sdk.models import (
    Accepted,
    Asset,
    Credential,
    Endpoint,
    EndpointSettings,
    Event,
    Example,
    Job,
    Response,
    Secret,
    Token,
    TokenCreated,
    Tune,
)
from shared.packing import pack_dir

_ENDPOINTS = TypeAdapter(list[Endpoint])
_EVENTS = TypeAdapter(list[Event])
_TOKENS = TypeAdapter(list[Token])
_CREDENTIALS = TypeAdapter(list[Credential])
_EXAMPLES = TypeAdapter(list[Example])
_JOBS = TypeAdapter(list[Job])
_ASSETS = TypeAdapter(list[Asset])
_TUNES = TypeAdapter(list[Tune])


def _model(adapter: Any) -> Any:
    def parse(resp: httpx.Response) -> Any:
        return adapter.validate_json(check(resp).content)

    return parse


def _of(model: Any) -> Any:
    def parse(resp: httpx.Response) -> Any:
        return model.model_validate_json(check(resp).content)

    return parse


def _json(resp: httpx.Response) -> Any:
    return check(resp).json()


def _nothing(resp: httpx.Response) -> None:
    check(resp)


# -- inference ------------------------------------------------------------------------------


def _infer_headers(
    headers: dict[str, str] | None, deadline: float | None, callback_url: str | None
) -> dict[str, str]:
    out = {k.lower(): v for k, v in (headers or {}).items()}
    if deadline is not None:
        out["x-berth-deadline"] = f"{deadline:g}"
    if callback_url is not None:
        out["x-berth-callback-url"] = callback_url
    return out


def infer(
    s: Settings,
    endpoint: str,
    inputs: Any,
    path: str,
    headers: dict[str, str] | None,
    deadline: float | None,
    timeout: float | None,
) -> Call[Any]:
    def parse(resp: httpx.Response) -> Any:
        return json_or_text(check(resp))

    return Call(
        "POST",
        s.endpoint(endpoint, path),
        parse,
        json=inputs,
        headers=_infer_headers(headers, deadline, None),
        timeout=timeout,
    )


def submit(
    s: Settings,
    endpoint: str,
    inputs: Any,
    path: str,
    headers: dict[str, str] | None,
    deadline: float | None,
    callback_url: str | None,
    idempotency_key: str | None,
) -> Call[Accepted]:
    """An async request: 202 with its id. Always sent with an Idempotency-Key (the caller's,
    else a new one), so sending it again after a lost answer makes no second job."""
    sent = _infer_headers(headers, deadline, callback_url)
    sent["x-octoai-async"] = "1"
    sent["idempotency-key"] = idempotency_key or new_idempotency_key()
    return Call(
        "POST", s.endpoint(endpoint, path), _of(Accepted), json=inputs, headers=sent, safe=True
    )


def stream_request(
    s: Settings,
    endpoint: str,
    inputs: Any,
    path: str,
    headers: dict[str, str] | None,
    deadline: float | None,
) -> Call[None]:
    sent = _infer_headers(headers, deadline, None)
    sent["accept"] = "text/event-stream"
    return Call("POST", s.endpoint(endpoint, path), _nothing, json=inputs, headers=sent)


def health_check(s: Settings, endpoint: str, path: str) -> Call[int]:
    return Call("GET", s.endpoint(endpoint, path), lambda resp: resp.status_code, safe=True)


# -- jobs -----------------------------------------------------------------------------------


def get_job(s: Settings, response_id: str) -> Call[Job]:
    return Call("GET", s.api(f"/v1/requests/{response_id}"), _of(Job), safe=True)


def cancel_job(s: Settings, response_id: str) -> Call[Job]:
    return Call("DELETE", s.api(f"/v1/requests/{response_id}"), _of(Job), safe=True)


def get_response(s: Settings, response_id: str) -> Call[Response]:
    def parse(resp: httpx.Response) -> Response:
        if "x-berth-replica" not in resp.headers:  # not a replica's answer: Berth's own
            check(resp)
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "x-user-request-id"}
        return Response(status=resp.status_code, headers=headers, content=resp.content)

    return Call("GET", s.api(f"/v1/responses/{response_id}"), parse, safe=True)


def list_jobs(s: Settings, endpoint: str | None, limit: int) -> Call[list[Job]]:
    params: dict[str, Any] = {"limit": limit}
    if endpoint:
        params["endpoint"] = endpoint
    return Call("GET", s.api("/v1/requests"), _model(_JOBS), params=params, safe=True)


def redeliver_callback(s: Settings, response_id: str) -> Call[Job]:
    return Call("POST", s.api(f"/v1/requests/{response_id}/callback"), _of(Job), safe=True)


# -- endpoints ------------------------------------------------------------------------------


def upload_model(s: Settings, folder: str | Path) -> Call[str]:
    archive = pack_dir(Path(folder))

    def parse(resp: httpx.Response) -> str:
        return str(check(resp).json()["model_id"])

    # The same folder is the same content digest: sending it again stores nothing twice.
    return Call(
        "POST",
        s.api("/v1/models"),
        parse,
        content=archive,
        headers={"content-type": "application/gzip"},
        safe=True,
    )


def create_endpoint(s: Settings, name: str, settings: EndpointSettings) -> Call[Endpoint]:
    body = {**settings.fields(), "name": name}
    return Call("POST", s.api("/v1/endpoint"), _of(Endpoint), json=body)


def get_endpoint(s: Settings, name: str) -> Call[Endpoint]:
    return Call("GET", s.api(f"/v1/endpoint/{name}"), _of(Endpoint), safe=True)


def list_endpoints(s: Settings) -> Call[list[Endpoint]]:
    return Call("GET", s.api("/v1/endpoints"), _model(_ENDPOINTS), safe=True)


def update_endpoint(s: Settings, name: str, settings: EndpointSettings) -> Call[Endpoint]:
    body = settings.fields()
    return Call("PATCH", s.api(f"/v1/endpoint/{name}"), _of(Endpoint), json=body, safe=True)


def delete_endpoint(s: Settings, name: str) -> Call[None]:
    return Call("DELETE", s.api(f"/v1/endpoint/{name}"), _nothing, safe=True)


def events(s: Settings, name: str, max_lines: int) -> Call[list[Event]]:
    def parse(resp: httpx.Response) -> list[Event]:
        body = check(resp).json()
        return _EVENTS.validate_python(body.get("events", body) if isinstance(body, dict) else body)

    return Call(
        "GET", s.api(f"/v1/events/{name}"), parse, params={"max_lines": max_lines}, safe=True
    )


def logs(
    s: Settings, name: str, max_lines: int, replica_id: str | None
) -> Call[list[dict[str, Any]]]:
    def parse(resp: httpx.Response) -> list[dict[str, Any]]:
        body = check(resp).json()
        return list(body.get("lines", body) if isinstance(body, dict) else body)

    params: dict[str, Any] = {"max_lines": max_lines}
    if replica_id:
        params["replica_id"] = replica_id
    return Call("GET", s.api(f"/v1/logs/{name}"), parse, params=params, safe=True)


def raw(s: Settings, method: str, path: str, body: Any, params: dict[str, Any] | None) -> Call[Any]:
    """Any API call by its path; the decoded JSON answer (text when not JSON)."""

    def parse(resp: httpx.Response) -> Any:
        return json_or_text(check(resp))

    safe = method.upper() in ("GET", "HEAD", "PUT", "DELETE")
    return Call(method.upper(), s.api(path), parse, json=body, params=params, safe=safe)


def examples(s: Settings) -> Call[list[Example]]:
    return Call("GET", s.api("/v1/examples"), _model(_EXAMPLES), safe=True)


# -- access ---------------------------------------------------------------------------------


def create_token(
    s: Settings, name: str, scopes: list[str], endpoints: list[str] | None, expires_in: int | None
) -> Call[TokenCreated]:
    body: dict[str, Any] = {"name": name, "scopes": scopes}
    if endpoints is not None:
        body["endpoints"] = endpoints
    if expires_in is not None:
        body["expires_in"] = expires_in
    return Call("POST", s.api("/v1/tokens"), _of(TokenCreated), json=body)


def list_tokens(s: Settings) -> Call[list[Token]]:
    return Call("GET", s.api("/v1/tokens"), _model(_TOKENS), safe=True)


def delete_token(s: Settings, token_id: str) -> Call[None]:
    return Call("DELETE", s.api(f"/v1/tokens/{token_id}"), _nothing, safe=True)


def update_secret(s: Settings, key: str, value: str) -> Call[Secret]:
    return Call("PUT", s.api(f"/v1/secret/{key}"), _of(Secret), json={"value": value}, safe=True)


def create_secret(s: Settings, key: str, value: str) -> Call[Secret]:
    return Call("POST", s.api("/v1/secret"), _of(Secret), json={"key": key, "value": value})


def list_secrets(s: Settings) -> Call[list[str]]:
    return Call("GET", s.api("/v1/secrets"), _json, safe=True)


def delete_secret(s: Settings, key: str) -> Call[None]:
    return Call("DELETE", s.api(f"/v1/secret/{key}"), _nothing, safe=True)


def create_credential(s: Settings, key: str, username: str, password: str) -> Call[Credential]:
    body = {"key": key, "username": username, "password": password}
    return Call("POST", s.api("/v1/registry-credential"), _of(Credential), json=body)


def update_credential(s: Settings, key: str, username: str, password: str) -> Call[Credential]:
    body = {"username": username, "password": password}
    return Call(
        "PUT", s.api(f"/v1/registry-credential/{key}"), _of(Credential), json=body, safe=True
    )


def list_credentials(s: Settings) -> Call[list[Credential]]:
    return Call("GET", s.api("/v1/registry-credentials"), _model(_CREDENTIALS), safe=True)


def delete_credential(s: Settings, key: str) -> Call[None]:
    return Call("DELETE", s.api(f"/v1/registry-credential/{key}"), _nothing, safe=True)


def webhook_secret(s: Settings) -> Call[str]:
    def parse(resp: httpx.Response) -> str:
        return str(check(resp).json()["secret"])

    return Call("GET", s.api("/v1/webhook-secret"), parse, safe=True)


# -- assets ---------------------------------------------------------------------------------


def create_asset(s: Settings, body: dict[str, Any]) -> Call[dict[str, Any]]:
    """The asset made, and where to upload it (``transfer_api.put_url``)."""
    return Call("POST", s.api("/v1/assets"), _json, json=body)


def complete_asset_upload(s: Settings, asset_id: str) -> Call[dict[str, Any]]:
    return Call("POST", s.api(f"/v1/assets/{asset_id}/complete-upload"), _json, json={}, safe=True)


def get_asset(s: Settings, key: str) -> Call[Asset]:
    def parse(resp: httpx.Response) -> Asset:
        return Asset.model_validate(check(resp).json()["asset"])

    return Call("GET", s.api(f"/v1/assets/{key}"), parse, safe=True)


def list_assets(s: Settings, filters: dict[str, Any]) -> Call[list[Asset]]:
    def parse(resp: httpx.Response) -> list[Asset]:
        return _ASSETS.validate_python(check(resp).json()["data"])

    return Call("GET", s.api("/v1/assets"), parse, params=filters, safe=True)


def delete_asset(s: Settings, asset_id: str) -> Call[None]:
    return Call("DELETE", s.api(f"/v1/assets/{asset_id}"), _nothing, safe=True)


def asset_body(
    path: Path, name: str, asset_type: str, data: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    """A create body for the file at ``path``, its sha256 and size declared so that the
    server checks the upload against them (the file is read in pieces, never whole)."""
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(UPLOAD_CHUNK):
            hasher.update(piece)
    body = {
        "name": name,
        "asset_type": asset_type,
        "data": {**(data or {}), "asset_type": asset_type},
        "sha256": hasher.hexdigest(),
        "size_bytes": path.stat().st_size,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def url_asset_body(
    url: str, name: str, asset_type: str, data: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    """A create body for an asset the server fetches from ``url``."""
    body = {
        "name": name,
        "asset_type": asset_type,
        "data": {**(data or {}), "asset_type": asset_type},
        "url": url,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def fetched(asset: Any) -> Any:
    """The asset once its fetch ended: itself when ready, else Unprocessable (422) with
    the server's reason; None while it is still being fetched."""
    if asset.status == "uploaded":
        return None
    if asset.status != "ready":
        raise Unprocessable(
            f"asset {asset.name} is {asset.status}: {asset.status_details}", status=422
        )
    return asset


def file_pieces(path: Path, progress: Any = None) -> Iterator[bytes]:
    """The file at ``path`` in pieces, ``progress(sent, total)`` after each."""
    total, sent = path.stat().st_size, 0
    with path.open("rb") as f:
        while piece := f.read(UPLOAD_CHUNK):
            sent += len(piece)
            yield piece
            if progress is not None:
                progress(sent, total)


# -- fine-tuning ----------------------------------------------------------------------------


def create_tune(s: Settings, body: dict[str, Any]) -> Call[Tune]:
    return Call("POST", s.api("/v1/tune"), _of(Tune), json=body)


def get_tune(s: Settings, tune_id: str) -> Call[Tune]:
    return Call("GET", s.api(f"/v1/tune/{tune_id}"), _of(Tune), safe=True)


def list_tunes(s: Settings, filters: dict[str, Any]) -> Call[list[Tune]]:
    def parse(resp: httpx.Response) -> list[Tune]:
        return _TUNES.validate_python(check(resp).json()["data"])

    return Call("GET", s.api("/v1/tunes"), parse, params=filters, safe=True)


def cancel_tune(s: Settings, tune_id: str) -> Call[Tune]:
    return Call("POST", s.api(f"/v1/tune/{tune_id}/cancel"), _of(Tune), safe=True)


def delete_tune(s: Settings, tune_id: str) -> Call[None]:
    return Call("DELETE", s.api(f"/v1/tune/{tune_id}"), _nothing, safe=True)


# The base checkpoint a tune names by default, by engine (any id is taken: the trainers
# start from their engine's base model).
CHECKPOINTS = {
    "text/all-minilm-l6-v2": "all-minilm-l6-v2",
    "image/stable-diffusion-xl-v1-0": "octoai:default-sdxl",
}


def tune_body(
    name: str,
    files: list[str],
    steps: int,
    engine: str,
    checkpoint_id: str | None,
    trigger_words: list[str],
    captions: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """``captions``: a caption per file id (an SDXL tune's pictures; the trigger words
    stand in for a file without one)."""
    captions = captions or {}
    details: dict[str, Any] = {
        "tune_type": "lora_tune",
        "base_checkpoint": {
            "checkpoint_id": checkpoint_id or CHECKPOINTS.get(engine, engine),
            "engine": engine,
        },
        "files": [
            {"file_id": f, **({"caption": captions[f]} if f in captions else {})} for f in files
        ],
        "steps": steps,
        "trigger_words": trigger_words,
    }
    details.update({k: v for k, v in extra.items() if v is not None})
    return {"name": name, "details": details}
