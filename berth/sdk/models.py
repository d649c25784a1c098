"""What Berth's API answers, as typed models. Fields a newer API adds are kept (extra
fields allowed), so an older SDK reads a newer server."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Accepted",
    "Asset",
    "CallbackAttempt",
    "CallbackLog",
    "Credential",
    "Endpoint",
    "EndpointSettings",
    "Event",
    "Example",
    "Failing",
    "Job",
    "JobStatus",
    "Replica",
    "Response",
    "Secret",
    "Token",
    "TokenCreated",
    "Tune",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Replica(_Model):
    replica_id: str
    status: str
    restarts: int = 0
    age: float = -1


class Failing(_Model):
    reason: str
    failures: int = 0
    since: float | None = None
    retry_at: float | None = None


class Endpoint(_Model):
    """An endpoint as ``GET /v1/endpoint/{name}`` shows it (OctoAI's fields, and Berth's)."""

    name: str
    endpoint: str  # its URL
    display_name: str | None = None
    description: str | None = None
    image_url: str | None = None
    model_id: str | None = None
    example: str | None = None
    min_replicas: int = 0
    max_replicas: int = 1
    scale_to_zero: int = 300
    concurrency_per_replica: int = 1
    visibility: Literal["private", "public"] = "private"
    endpoint_state: str = "active"
    instance_type: str = "cpu"
    request_timeout: float = 300.0
    max_queue_length: int | None = None
    replicas: list[Replica] = Field(default_factory=list)
    failing: Failing | None = None
    queued: int = 0
    in_flight: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def ready(self) -> bool:
        """Whether a replica is running (a request would not wait for a cold start)."""
        return any(r.status == "running" for r in self.replicas)


class EndpointSettings(BaseModel):
    """What an endpoint is made with or changed to (every field optional): checked here,
    so a misspelt or mistyped setting fails before anything is sent."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = None
    description: str | None = None
    example: str | None = None
    image_url: str | None = None
    model_id: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=0)
    scale_to_zero: int | None = Field(default=None, ge=0)
    concurrency_per_replica: int | None = Field(default=None, ge=1)
    visibility: Literal["private", "public"] | None = None
    endpoint_state: Literal["active", "disabled"] | None = None
    health_check_path: str | None = None
    instance_type: str | None = None
    registry_credential: str | None = None
    env_overrides: dict[str, str] | None = None
    container_secrets: list[str] | None = None
    request_timeout: float | None = Field(default=None, gt=0)
    max_queue_length: int | None = Field(default=None, ge=0)
    sync_wait: float | None = Field(default=None, ge=0)
    # Assets (ids or names) the replicas find under $OCTOAI_VOLUME_PATH/assets/<name>.
    assets: list[str] | None = None

    def fields(self) -> dict[str, Any]:
        """The settings given (None: left to the server's default or current value)."""
        return self.model_dump(exclude_none=True, mode="json")


class Asset(_Model):
    """An asset of the library, as ``GET /v1/assets/{id}`` shows it (OctoAI's fields)."""

    id: str
    name: str
    asset_type: str
    data: dict[str, Any]
    status: str
    status_details: str = ""
    description: str = ""
    size_bytes: int = 0
    created_at: str
    is_public: bool = False
    sha256: str | None = None


class Tune(_Model):
    """A fine-tuning run, as ``GET /v1/tune/{id}`` shows it (OctoAI's fields, and Berth's
    ``endpoint`` and ``metrics``)."""

    id: str
    name: str
    status: str
    status_details: str = ""
    tune_type: str
    details: dict[str, Any]
    output_lora_ids: list[str] = Field(default_factory=list)
    endpoint: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def ended(self) -> bool:
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


class CallbackAttempt(_Model):
    at: float
    status: int | None = None
    error: str | None = None
    duration_ms: float = 0.0


class CallbackLog(_Model):
    url: str
    state: str
    attempts: int = 0
    log: list[CallbackAttempt] = Field(default_factory=list)
    delivered_at: float | None = None
    next_attempt_at: float | None = None


class Job(_Model):
    """An async request's state (``GET /v1/requests/{id}``)."""

    response_id: str
    status: JobStatus
    endpoint: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    replica_id: str | None = None
    deadline: float | None = None
    reason: str | None = None
    response_url: str | None = None
    queue_position: int | None = None
    estimated_wait_s: float | None = None
    timings: dict[str, Any] = Field(default_factory=dict)
    callback: CallbackLog | None = None
    trace_id: str | None = None


class Accepted(_Model):
    """A 202: the job's id and where to poll it."""

    response_id: str
    poll_url: str


class Response(_Model):
    """A replica's answer as it gave it: status, headers and body."""

    status: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:  # type: ignore[override]
        import json

        return json.loads(self.content)


class Event(_Model):
    timestamp: str
    replica_id: str | None = None
    event: dict[str, Any]


class Example(_Model):
    name: str
    description: str = ""
    needs: list[str] = Field(default_factory=list)


class Token(_Model):
    id: str
    name: str
    scopes: list[str]
    endpoints: list[str] | None = None
    created_at: float = 0.0
    expires_at: float | None = None


class TokenCreated(Token):
    token: str  # shown once


class Secret(_Model):
    key: str
    created_at: float = 0.0
    updated_at: float = 0.0


class Credential(_Model):
    key: str
    username: str
    created_at: float = 0.0
    updated_at: float = 0.0
