"""A small synchronous client for Berth's API, used by the CLI.

It finds the API and its token from ``BERTH_URL`` / ``BERTH_TOKEN``, falling back
to what ``berth up`` wrote in the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from shared.settings import default_data_dir

__all__ = ["ApiError", "Client", "from_environment"]


class ApiError(Exception):
    def __init__(self, status: int, body: Any, request_id: str | None):
        self.status = status
        self.body = body
        self.request_id = request_id
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {message or body} (request id {request_id})")


def data_dir() -> Path:
    return Path(os.environ.get("BERTH_DATA_DIR") or default_data_dir())


def from_environment(timeout: float | None = 330.0) -> Client:
    url = os.environ.get("BERTH_URL")
    token = os.environ.get("BERTH_TOKEN")
    if not url and (data_dir() / "api-url").exists():
        url = (data_dir() / "api-url").read_text().strip()
    if not token and (data_dir() / "admin-token").exists():
        token = (data_dir() / "admin-token").read_text().strip()
    if not url:
        raise SystemExit("berth: no API found: set BERTH_URL (and BERTH_TOKEN) or run `berth up`")
    return Client(url, token, timeout=timeout)


class Client:
    def __init__(self, url: str, token: str | None, *, timeout: float | None = 330.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _json(self, resp: httpx.Response) -> Any:
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, body, resp.headers.get("x-user-request-id"))
        return body

    def upload_model(self, archive: bytes) -> str:
        resp = self.http.post(
            "/v1/models", content=archive, headers={"content-type": "application/gzip"}
        )
        return str(self._json(resp)["model_id"])

    def create_endpoint(self, **fields: Any) -> dict[str, Any]:
        return self._json(self.http.post("/v1/endpoint", json=fields))  # type: ignore[no-any-return]

    def update_endpoint(self, name: str, **fields: Any) -> dict[str, Any]:
        return self._json(self.http.patch(f"/v1/endpoint/{name}", json=fields))  # type: ignore[no-any-return]

    def get_endpoint(self, name: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/endpoint/{name}"))  # type: ignore[no-any-return]

    def list_endpoints(self) -> list[dict[str, Any]]:
        return self._json(self.http.get("/v1/endpoints"))  # type: ignore[no-any-return]

    def delete_endpoint(self, name: str) -> dict[str, Any]:
        return self._json(self.http.delete(f"/v1/endpoint/{name}"))  # type: ignore[no-any-return]

    def events(self, name: str, max_lines: int = 50) -> list[dict[str, Any]]:
        return self._json(self.http.get(f"/v1/events/{name}", params={"max_lines": max_lines}))  # type: ignore[no-any-return]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Any control-plane call; the decoded JSON answer, or ApiError."""
        return self._json(self.http.request(method, path, json=body))

    def infer(self, name: str, payload: Any, path: str = "/infer") -> httpx.Response:
        return self.http.post(f"/e/{name}{path}", json=payload)
