"""SQLModel tables and their API shapes, layered per resource.

``EndpointBase`` → ``EndpointCreate`` / ``EndpointUpdate`` → ``Endpoint`` (the
table) → ``EndpointPublic`` (what routes return). Field names are OctoAI's;
Berth's additions (``model_id``, ``request_timeout``, ``max_queue_length``) are
additive.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import field_validator, model_validator
from sqlalchemy import JSON, BigInteger, LargeBinary, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from shared.instance_types import parse_instance_type
from shared.names import ENDPOINT_NAME_RE

__all__ = [
    "ApiToken",
    "Asset",
    "AssetStatus",
    "Endpoint",
    "EndpointCreate",
    "EndpointPublic",
    "EndpointState",
    "EndpointUpdate",
    "FailingPublic",
    "ReplicaPublic",
    "Scope",
    "StoredSecret",
    "TokenCreate",
    "TokenCreated",
    "TokenPublic",
    "Tune",
    "TuneStatus",
    "Visibility",
]


class Visibility(StrEnum):
    PRIVATE = "private"
    PUBLIC = "public"


class EndpointState(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


def _check_path(value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        raise ValueError("must start with '/'")
    return value


class EndpointBase(SQLModel):
    display_name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    image_url: str | None = Field(default=None, max_length=1000)
    model_id: str | None = Field(default=None, max_length=100)
    # The catalogue example it was made from (GET /v1/examples), if any: Berth stores
    # that example's model as model_id, and its snippets use the example's input.
    example: str | None = Field(default=None, max_length=63)
    port: int = Field(default=8080, ge=1, le=65535)
    min_replicas: int = Field(default=0, ge=0, le=999)
    max_replicas: int = Field(default=1, ge=0, le=999)
    scale_to_zero: int = Field(default=300, ge=0, le=3600)
    concurrency_per_replica: int = Field(default=1, ge=1, le=500)
    visibility: Visibility = Visibility.PRIVATE
    endpoint_state: EndpointState = EndpointState.ACTIVE
    health_check_path: str = Field(default="/healthcheck", max_length=500)
    instance_type: str = Field(default="cpu", max_length=100)
    registry_credential: str | None = Field(default=None, max_length=200)
    env_overrides: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    container_secrets: list[str] = Field(default_factory=list, sa_type=JSON)
    request_timeout: float = Field(default=300.0, gt=0, le=86400)
    max_queue_length: int | None = Field(default=None, ge=0)
    # A sync request not answered within this many seconds becomes a job (202 with
    # Location) instead of waiting on, as if it had sent ``Prefer: wait=<sync_wait>``.
    sync_wait: float | None = Field(default=None, ge=0, le=3600)
    # Assets (ids, names or owner/name) the replicas find read-only under
    # $OCTOAI_VOLUME_PATH/assets/<name>; stored as ids once resolved.
    assets: list[str] = Field(default_factory=list, sa_type=JSON, max_length=64)


class EndpointCreate(EndpointBase):
    name: str = Field(max_length=63)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not ENDPOINT_NAME_RE.match(value):
            raise ValueError(
                "must be a DNS label: 1-63 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit"
            )
        return value

    @field_validator("health_check_path")
    @classmethod
    def _path(cls, value: str) -> str:
        _check_path(value)
        return value

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        parse_instance_type(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EndpointCreate:
        values = self.model_dump()
        if self.example:
            if self.image_url or self.model_id:
                raise ValueError("give an example, or image_url or model_id, not both")
            values["model_id"] = "the example's"  # stored at creation
        check_endpoint_config(values)
        return self


class EndpointUpdate(SQLModel):
    """PATCH body: every field optional; only the fields sent are changed."""

    display_name: str | None = None
    description: str | None = None
    image_url: str | None = None
    model_id: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    min_replicas: int | None = Field(default=None, ge=0, le=999)
    max_replicas: int | None = Field(default=None, ge=0, le=999)
    scale_to_zero: int | None = Field(default=None, ge=0, le=3600)
    concurrency_per_replica: int | None = Field(default=None, ge=1, le=500)
    visibility: Visibility | None = None
    endpoint_state: EndpointState | None = None
    health_check_path: str | None = None
    instance_type: str | None = None
    registry_credential: str | None = None
    env_overrides: dict[str, str] | None = None
    container_secrets: list[str] | None = None
    request_timeout: float | None = Field(default=None, gt=0, le=86400)
    max_queue_length: int | None = Field(default=None, ge=0)
    sync_wait: float | None = Field(default=None, ge=0, le=3600)
    assets: list[str] | None = Field(default=None, max_length=64)

    @field_validator("health_check_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return _check_path(value)


def check_endpoint_config(values: dict[str, Any]) -> None:
    """Cross-field rules, shared by create and by update (on the merged result)."""
    if values["min_replicas"] > values["max_replicas"]:
        raise ValueError("min_replicas must not exceed max_replicas")
    if not values.get("image_url") and not values.get("model_id"):
        raise ValueError("one of image_url, model_id or example is required")
    if values.get("image_url") and values.get("model_id"):
        raise ValueError("give image_url or model_id, not both")


class Endpoint(EndpointBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True, index=True)
    revision: int = 0
    # Bumped when a secret or registry credential the endpoint uses changes, so its
    # replicas roll over to the new values.
    secrets_generation: int = 0
    # What the agents fetch for ``assets``: [{id, name, sha256, size_bytes}], resolved
    # when the endpoint is saved.
    asset_refs: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


class ReplicaPublic(SQLModel):
    """OctoAI's replica shape; ``age`` is seconds since ready, -1 if not ready."""

    account_key: str = "default"
    endpoint_name: str
    replica_id: str
    status: Literal["pending", "running", "succeeded", "failed", "unknown"]
    restarts: int = 0
    age: int = -1


class FailingPublic(SQLModel):
    """Why an endpoint's replicas keep failing to start (Berth's addition)."""

    reason: str
    failures: int  # failed starts in a row
    since: float
    retry_at: float  # when the next start is tried


class EndpointPublic(EndpointBase):
    name: str
    endpoint: str
    replicas: list[ReplicaPublic] = Field(default_factory=list)
    # Set while the endpoint's replicas keep failing to start: requests are then
    # answered at once with 503 and this reason, and queued jobs end failed with it.
    failing: FailingPublic | None = None
    # Berth's additions: requests waiting in the endpoint's queue, and being served.
    queued: int = 0
    in_flight: int = 0
    created_at: float
    updated_at: float


# -- assets ---------------------------------------------------------------------------------


class AssetStatus(StrEnum):
    READY_TO_UPLOAD = "ready_to_upload"
    UPLOADED = "uploaded"
    READY = "ready"
    DELETED = "deleted"
    REJECTED = "rejected"
    ERROR = "error"


class Asset(SQLModel, table=True):
    """One asset of the library (OctoAI's fields), its content named by sha256."""

    __tablename__ = "asset"
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=128, index=True)
    asset_type: str = Field(max_length=32)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    description: str = Field(default="", max_length=2000)
    is_public: bool = False
    # Stored as its value (a plain string column): compare with ==, not is.
    status: AssetStatus = Field(default=AssetStatus.READY_TO_UPLOAD, sa_type=String(16))
    status_details: str = Field(default="", max_length=2000)
    size_bytes: int = Field(default=0, sa_type=BigInteger)
    # The content's sha256 once uploaded; what the caller said to expect, if anything.
    sha256: str | None = Field(default=None, max_length=64)
    expected_sha256: str | None = Field(default=None, max_length=64)
    expected_size: int | None = Field(default=None, sa_type=BigInteger)
    skip_validation: bool = False
    # The presigned upload URL's token, as a SHA-256 digest; and when it stops working.
    upload_token_sha256: str | None = Field(default=None, max_length=64)
    upload_expires_at: float | None = None
    # An asset created from a URL: where the API fetches it (it may carry a signature in
    # its query, so it is never shown back); None for uploads.
    source_url: str | None = Field(default=None, max_length=2048)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    deleted_at: float | None = None


class TuneStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Tune(SQLModel, table=True):
    """A fine-tuning run (OctoAI's fields): a job of a trainer endpoint of its own, whose
    answer becomes a LoRA asset."""

    __tablename__ = "tune"
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=128, index=True)
    description: str = Field(default="", max_length=2000)
    tune_type: str = Field(max_length=64)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # Stored as its value (a plain string column): compare with ==, not is.
    status: TuneStatus = Field(default=TuneStatus.PENDING, sa_type=String(16))
    status_details: str = Field(default="", max_length=4000)
    output_lora_ids: list[str] = Field(default_factory=list, sa_type=JSON)
    # The trainer endpoint and the job it runs; what training reported.
    endpoint: str = Field(default="", max_length=63)
    response_id: str = Field(default="", max_length=64)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    succeeded_at: float | None = None
    deleted_at: float | None = None


# -- tokens ---------------------------------------------------------------------------------


class Scope(StrEnum):
    ADMIN = "admin"  # the control plane, and inference on every endpoint
    INFERENCE = "inference"  # the data plane (optionally of named endpoints only)
    AGENT = "agent"  # a fleet agent: its replicas' secrets and registry credentials
    METRICS = "metrics"  # a Prometheus scraper: GET /metrics, nothing else


class TokenCreate(SQLModel):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1)
    # Inference tokens only: the endpoints this token may call (None: all of them).
    endpoints: list[str] | None = None
    # Seconds from now until the token stops working (None: never).
    expires_in: int | None = Field(default=None, gt=0, le=10 * 365 * 86400)

    @field_validator("endpoints")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if not ENDPOINT_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not an endpoint name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TokenCreate:
        if self.endpoints is not None and self.scopes != [Scope.INFERENCE]:
            raise ValueError("endpoints limits inference tokens only: scopes must be ['inference']")
        return self


class TokenBase(SQLModel):
    name: str
    scopes: list[str] = Field(sa_type=JSON)
    endpoints: list[str] | None = Field(default=None, sa_type=JSON)
    created_at: float = Field(default_factory=time.time)
    expires_at: float | None = None


class ApiToken(TokenBase, table=True):
    """A token as stored: its secret part only as a SHA-256 digest, never recoverable."""

    __tablename__ = "api_token"
    id: str = Field(primary_key=True, max_length=32)
    secret_sha256: str = Field(max_length=64)


class TokenPublic(TokenBase):
    id: str


class TokenCreated(TokenPublic):
    # Shown once, at creation.
    token: str


# -- the local secret store -----------------------------------------------------------------


class StoredSecret(SQLModel, table=True):
    """One secret or registry credential of the local store, sealed with AES-GCM."""

    __tablename__ = "stored_secret"
    __table_args__ = (UniqueConstraint("kind", "key"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    key: str = Field(max_length=128)
    nonce: bytes = Field(sa_type=LargeBinary)
    ciphertext: bytes = Field(sa_type=LargeBinary)
    # Which key sealed it (a fingerprint, see shared.stores.local.key_id).
    key_id: str = Field(max_length=32)
    created_at: float
    updated_at: float
