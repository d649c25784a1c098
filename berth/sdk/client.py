"""The synchronous client: :class:`Client` and its job handle, :class:`Job`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tenacity

from berth.sdk import _calls as calls
from berth.sdk._core import (
    Call,
    Settings,
    backoff,
    check,
    chunks,
    poll_interval,
    retryable,
    sse_events,
    transport_error,
)
from berth.sdk.errors import BerthError, JobFailed, NotFound
from berth.sdk.models import (
    Asset,
    Credential,
    Endpoint,
    EndpointSettings,
    Event,
    Example,
    Job,
    JobStatus,
    Response,
    Secret,
    Token,
    TokenCreated,
    Tune,
)

__all__ = ["Client", "JobHandle"]

T = TypeVar("T")
Progress = Callable[[int, int], None]


class Client:
    """Berth's API, synchronously. ``url`` and ``token`` default to ``BERTH_URL`` and
    ``BERTH_TOKEN`` (else what ``berth up`` wrote); ``retries`` bounds the tries of a call
    that may safely be sent again."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float | None = 330.0,
        retries: int = 3,
        http: httpx.Client | None = None,
    ):
        self._s = Settings(url, token, timeout, retries)
        self._http = http or httpx.Client(headers=self._s.headers(), timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one place a call is sent --------------------------------------------------------

    def _send(self, call: Call[T], progress: Progress | None = None) -> T:
        content: Any = call.content
        if progress is not None and content is not None:
            content = chunks(content, progress)
        try:
            resp = self._http.request(
                call.method,
                call.url,
                json=call.json,
                content=content,
                params=call.params,
                headers=call.headers,
                timeout=call.timeout or httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        return call.parse(resp)

    def _do(self, call: Call[T], progress: Progress | None = None) -> T:
        try:
            return self._send(call, progress)  # most calls: once, without tenacity's loop
        except BerthError as exc:
            if self._s.retries < 1 or not retryable(call, exc):
                raise
            time.sleep(backoff(0, exc))
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._s.retries),
            retry=tenacity.retry_if_exception(lambda e: retryable(call, e)),
            wait=lambda state: backoff(state.attempt_number, _exception(state)),
            reraise=True,
        )
        answer: T = retrying(self._send, call, progress)
        return answer

    # -- inference ---------------------------------------------------------------------------

    def infer(
        self,
        endpoint: str,
        inputs: Any,
        *,
        path: str = "/infer",
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The model's answer (JSON decoded; text or bytes otherwise). ``endpoint``: a name
        or an endpoint's URL; ``deadline``: seconds the request may take in all."""
        return self._do(calls.infer(self._s, endpoint, inputs, path, headers, deadline, timeout))

    def infer_async(
        self,
        endpoint: str,
        inputs: Any,
        *,
        path: str = "/infer",
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobHandle:
        """Queue the request as a job; its handle (poll, wait, result, cancel)."""
        call = calls.submit(
            self._s, endpoint, inputs, path, headers, deadline, callback_url, idempotency_key
        )
        return JobHandle(self, self._do(call).response_id)

    def stream(
        self,
        endpoint: str,
        inputs: Any,
        *,
        path: str = "/infer",
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> Iterator[Any]:
        """The model's server-sent events as they come (each event's data, JSON decoded)."""
        call = calls.stream_request(self._s, endpoint, inputs, path, headers, deadline)
        try:
            with self._http.stream(
                call.method, call.url, json=call.json, headers=call.headers
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    check(resp)
                yield from sse_events(resp.iter_lines())
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc

    def health_check(self, endpoint: str, *, path: str = "/healthcheck") -> int:
        """The endpoint's health check status (200 when a replica answers it)."""
        return self._do(calls.health_check(self._s, endpoint, path))

    # -- jobs --------------------------------------------------------------------------------

    def job(self, response_id: str) -> JobHandle:
        return JobHandle(self, response_id)

    def get_job(self, response_id: str) -> Job:
        return self._do(calls.get_job(self._s, response_id))

    def cancel_job(self, response_id: str) -> Job:
        return self._do(calls.cancel_job(self._s, response_id))

    def get_response(self, response_id: str) -> Response:
        return self._do(calls.get_response(self._s, response_id))

    def list_jobs(self, endpoint: str | None = None, *, limit: int = 50) -> list[Job]:
        return self._do(calls.list_jobs(self._s, endpoint, limit))

    def redeliver_callback(self, response_id: str) -> Job:
        return self._do(calls.redeliver_callback(self._s, response_id))

    # -- endpoints ---------------------------------------------------------------------------

    def upload_model(self, folder: str | Path, *, progress: Progress | None = None) -> str:
        """Pack and upload a model folder; its ``model_id``. ``progress(sent, total)``."""
        return self._do(calls.upload_model(self._s, folder), progress)

    def create_endpoint(
        self,
        name: str,
        *,
        example: str | None = None,
        model_folder: str | Path | None = None,
        image: str | None = None,
        progress: Progress | None = None,
        **settings: Any,
    ) -> Endpoint:
        """An endpoint from an example, a model folder (uploaded first) or an image, with
        any of the endpoint's settings (min_replicas, max_replicas, visibility, ...)."""
        fields = EndpointSettings(**settings)
        if example is not None:
            fields.example = example
        if image is not None:
            fields.image_url = image
        if model_folder is not None:
            fields.model_id = self.upload_model(model_folder, progress=progress)
        return self._do(calls.create_endpoint(self._s, name, fields))

    def get_endpoint(self, name: str) -> Endpoint:
        return self._do(calls.get_endpoint(self._s, name))

    def list_endpoints(self) -> list[Endpoint]:
        return self._do(calls.list_endpoints(self._s))

    def update_endpoint(
        self, name: str, *, model_folder: str | Path | None = None, **fields: Any
    ) -> Endpoint:
        settings = EndpointSettings(**fields)
        if model_folder is not None:
            settings.model_id = self.upload_model(model_folder)
        return self._do(calls.update_endpoint(self._s, name, settings))

    def delete_endpoint(self, name: str) -> None:
        self._do(calls.delete_endpoint(self._s, name))

    def wait_until_ready(self, name: str, *, timeout: float = 300.0) -> Endpoint:
        """The endpoint once a replica runs; raises the reason if its replicas keep failing
        to start, TimeoutError past ``timeout``."""
        deadline = time.monotonic() + timeout
        tries = 0
        while True:
            endpoint = self.get_endpoint(name)
            if endpoint.ready:
                return endpoint
            if endpoint.failing is not None:
                raise BerthError(f"endpoint {name!r} is failing: {endpoint.failing.reason}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"endpoint {name!r} had no running replica in {timeout:g} s")
            time.sleep(poll_interval(tries))
            tries += 1

    def events(self, name: str, *, max_lines: int = 100) -> list[Event]:
        return self._do(calls.events(self._s, name, max_lines))

    def logs(
        self, name: str, *, max_lines: int = 100, replica_id: str | None = None
    ) -> list[dict[str, Any]]:
        return self._do(calls.logs(self._s, name, max_lines, replica_id))

    def follow_events(self, name: str, *, since: str | None = None) -> Iterator[dict[str, Any]]:
        """The endpoint's events as they happen (from ``since``, an ISO 8601 time)."""
        params = {"begin_time": since} if since else None
        yield from self._lines(f"/v1/events/{name}/stream", params)

    def follow_logs(self, name: str, *, replica_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The endpoint's log lines as its replicas write them."""
        params = {"replica_id": replica_id} if replica_id else None
        yield from self._lines(f"/v1/logs/{name}/stream", params)

    def _lines(self, path: str, params: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream("GET", self._s.api(path), params=params, timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    check(resp)
                for line in resp.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc

    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """Any API call by its path (``/v1/...``): the decoded JSON answer."""
        return self._do(calls.raw(self._s, method, path, json, params))

    def examples(self) -> list[Example]:
        return self._do(calls.examples(self._s))

    # -- access ------------------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        scopes: list[str],
        *,
        endpoints: list[str] | None = None,
        expires_in: int | None = None,
    ) -> TokenCreated:
        return self._do(calls.create_token(self._s, name, scopes, endpoints, expires_in))

    def list_tokens(self) -> list[Token]:
        return self._do(calls.list_tokens(self._s))

    def delete_token(self, token_id: str) -> None:
        self._do(calls.delete_token(self._s, token_id))

    def set_secret(self, key: str, value: str) -> Secret:
        """Create the secret, or change its value (replicas get it at their next start)."""
        try:
            return self._do(calls.update_secret(self._s, key, value))
        except NotFound:
            return self._do(calls.create_secret(self._s, key, value))

    def list_secrets(self) -> list[str]:
        return self._do(calls.list_secrets(self._s))

    def delete_secret(self, key: str) -> None:
        self._do(calls.delete_secret(self._s, key))

    # -- assets ------------------------------------------------------------------------------

    def upload_asset(
        self,
        path: str | Path,
        name: str,
        *,
        asset_type: str = "file",
        data: dict[str, Any] | None = None,
        description: str | None = None,
        is_public: bool | None = None,
        progress: Progress | None = None,
    ) -> Asset:
        """Upload a file as a new asset (streamed, checked by sha256 and size); the asset,
        ready. Raises InvalidRequest with the server's reason when it is refused."""
        path = Path(path)
        body = calls.asset_body(
            path, name, asset_type, data, description=description, is_public=is_public
        )
        made = self._do(calls.create_asset(self._s, body))
        try:
            put = self._http.put(
                made["transfer_api"]["put_url"],
                content=calls.file_pieces(path, progress),
                headers={"content-length": str(body["size_bytes"])},
                timeout=None,
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        check(put)
        self._do(calls.complete_asset_upload(self._s, made["asset"]["id"]))
        return self.get_asset(made["asset"]["id"])

    def import_asset(
        self,
        url: str,
        name: str,
        *,
        asset_type: str = "file",
        data: dict[str, Any] | None = None,
        description: str | None = None,
        is_public: bool | None = None,
        sha256: str | None = None,
        size_bytes: int | None = None,
        timeout: float = 3600,
    ) -> Asset:
        """A new asset that the server fetches from ``url`` (http or https; public
        addresses only unless the server allows others); the asset once ready.
        Unprocessable with the server's reason when it ends rejected or in error;
        TimeoutError after ``timeout`` seconds."""
        body = calls.url_asset_body(
            url, name, asset_type, data, description=description, is_public=is_public,
            sha256=sha256, size_bytes=size_bytes,
        )  # fmt: skip
        made = self._do(calls.create_asset(self._s, body))
        deadline = time.monotonic() + timeout
        tries = 0
        while True:
            ready = calls.fetched(self.get_asset(made["asset"]["id"]))
            if ready is not None:
                return ready  # type: ignore[no-any-return]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"asset {name} was not fetched in {timeout} s")
            time.sleep(poll_interval(tries))
            tries += 1

    def get_asset(self, key: str) -> Asset:
        """An asset by id, name or owner/name."""
        return self._do(calls.get_asset(self._s, key))

    def list_assets(self, **filters: Any) -> list[Asset]:
        """Assets, newest first (OctoAI's filters: name, asset_type, engine, limit, ...)."""
        return self._do(calls.list_assets(self._s, filters))

    def delete_asset(self, asset_id: str) -> None:
        self._do(calls.delete_asset(self._s, asset_id))

    # -- fine-tuning -------------------------------------------------------------------------

    def create_tune(
        self,
        name: str,
        files: list[str],
        *,
        steps: int = 300,
        engine: str = "text/all-minilm-l6-v2",
        checkpoint_id: str | None = None,
        trigger_words: list[str] | None = None,
        seed: int | None = None,
        captions: dict[str, str] | None = None,
    ) -> Tune:
        """Start a LoRA tune on file assets (ids); it runs on the fleet. ``engine``: the
        trainer, ``text/all-minilm-l6-v2`` (pairs) or ``image/stable-diffusion-xl-v1-0``
        (pictures, each captioned by ``captions[file id]`` or the trigger words)."""
        body = calls.tune_body(
            name, files, steps, engine, checkpoint_id, trigger_words or [], captions, seed=seed
        )
        return self._do(calls.create_tune(self._s, body))

    def get_tune(self, tune_id: str) -> Tune:
        return self._do(calls.get_tune(self._s, tune_id))

    def list_tunes(self, **filters: Any) -> list[Tune]:
        return self._do(calls.list_tunes(self._s, filters))

    def cancel_tune(self, tune_id: str) -> Tune:
        return self._do(calls.cancel_tune(self._s, tune_id))

    def delete_tune(self, tune_id: str) -> None:
        self._do(calls.delete_tune(self._s, tune_id))

    def wait_for_tune(self, tune_id: str, timeout: float = 3600) -> Tune:
        """The tune once it has ended (succeeded, failed or cancelled); TimeoutError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        tries = 0
        while True:
            tune = self.get_tune(tune_id)
            if tune.ended:
                return tune
            if time.monotonic() >= deadline:
                raise TimeoutError(f"tune {tune_id} has not ended in {timeout} s")
            time.sleep(poll_interval(tries))
            tries += 1

    def set_registry_credential(self, key: str, username: str, password: str) -> Credential:
        try:
            return self._do(calls.update_credential(self._s, key, username, password))
        except NotFound:
            return self._do(calls.create_credential(self._s, key, username, password))

    def list_registry_credentials(self) -> list[Credential]:
        return self._do(calls.list_credentials(self._s))

    def delete_registry_credential(self, key: str) -> None:
        self._do(calls.delete_credential(self._s, key))

    def webhook_secret(self) -> str:
        """The secret this token's callbacks are signed with (for :func:`verify_webhook`)."""
        return self._do(calls.webhook_secret(self._s))


class JobHandle:
    """An async request: its state, its end, its response, its cancel."""

    def __init__(self, client: Client, response_id: str):
        self.client = client
        self.response_id = response_id
        self.last: Job | None = None

    def __repr__(self) -> str:
        status = self.last.status.value if self.last else "?"
        return f"JobHandle({self.response_id!r}, {status})"

    def status(self) -> Job:
        """Its state now (status, queue position, timings, callback log)."""
        self.last = self.client.get_job(self.response_id)
        return self.last

    def wait(self, timeout: float | None = None) -> Job:
        """Its state once it has ended (completed, failed, cancelled or expired);
        TimeoutError past ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        tries = 0
        while True:
            job = self.status()
            if job.status.ended:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.response_id} has not ended ({job.status.value})")
            pause = poll_interval(tries)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            tries += 1

    def result(self, timeout: float | None = None) -> Response:
        """The replica's response once it has completed; :class:`JobFailed` if it ended
        otherwise (its state says why)."""
        job = self.wait(timeout)
        if job.status is not JobStatus.COMPLETED:
            raise JobFailed(job)
        return self.client.get_response(self.response_id)

    def cancel(self) -> Job:
        """Cancel it: queued, it never runs; running, its answer is not waited for."""
        self.last = self.client.cancel_job(self.response_id)
        return self.last


def _exception(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None
