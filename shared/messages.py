"""Wire messages exchanged over NATS between the API, the scaler and agents.

Pydantic models, separate from the DB tables: a table model never crosses NATS.
Each record and command carries ``v``, the version of its format. A reader takes
any version up to its own (fields added later have defaults, so an older
writer's message still reads) and refuses a newer one by name rather than
misreading it: a process older than the cluster says so instead of dropping
fields it does not know. A change that older readers could misread raises
``FORMAT_VERSION``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, field_validator

__all__ = [
    "FORMAT_VERSION",
    "STALE_AFTER",
    "STALE_HEARTBEATS",
    "AgentRecord",
    "AssetRef",
    "EndpointSpec",
    "GpuInfo",
    "JobRecord",
    "JobStatus",
    "ReplicaRecord",
    "ReplicaState",
    "StartReplica",
    "StopReplica",
    "Versioned",
]


# A record not refreshed for this long belongs to an agent that is gone. Agents
# write their own, shorter, `ttl` in each record (STALE_HEARTBEATS heartbeats), so a
# dead agent's replicas are rescheduled that soon; this is the default for records
# that carry none.
STALE_AFTER = 15.0
STALE_HEARTBEATS = 8


# The newest message format this code writes and reads.
FORMAT_VERSION = 1


class Versioned(BaseModel):
    """A message with a format version (``v``): one newer than FORMAT_VERSION is refused."""

    v: int = FORMAT_VERSION

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > FORMAT_VERSION:
            raise ValueError(
                f"{cls.__name__} is in format v{v}, written by a newer Berth; "
                f"this one reads up to v{FORMAT_VERSION}"
            )
        return v


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class AssetRef(BaseModel):
    """An asset a replica mounts: found at $OCTOAI_VOLUME_PATH/assets/<name>."""

    id: str
    name: str
    sha256: str
    size_bytes: int


class EndpointSpec(Versioned):
    """What the scaler and agents need to know about an endpoint (mirrored to KV)."""

    name: str
    model_id: str | None = None
    image_url: str | None = None
    port: int = 8080
    health_check_path: str = "/healthcheck"
    min_replicas: int = 0
    max_replicas: int = 1
    scale_to_zero: int = 300
    concurrency_per_replica: int = 1
    request_timeout: float = 300.0
    env_overrides: dict[str, str] = Field(default_factory=dict)
    instance_type: str = "cpu"
    # Keys only: the values reach a replica through the API (broker.secrets), never KV.
    container_secrets: list[str] = Field(default_factory=list)
    registry_credential: str | None = None
    secrets_generation: int = 0
    public: bool = False
    disabled: bool = False
    max_queue_length: int | None = None
    sync_wait: float | None = None
    assets: list[AssetRef] = Field(default_factory=list)
    revision: int = 0
    # Distinguishes an endpoint from an earlier one of the same name (delete, then create).
    incarnation: str = ""

    def replica_digest(self) -> str:
        """What a replica runs: a replica whose digest differs is outdated and gets replaced.

        Computed once per spec and kept in the instance's ``__dict__``, beside the
        fields (pydantic serialises and compares fields only): the API asks on every
        request, and a pydantic private attribute is slow to read.
        """
        digest: str | None = self.__dict__.get("_replica_digest")
        if digest is None:
            digest = self.__dict__["_replica_digest"] = self._compute_digest()
        return digest

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("_replica_digest", None)  # the copy may differ in what it covers
        return copied

    def _compute_digest(self) -> str:
        fields = self.model_dump(
            include={
                "model_id",
                "image_url",
                "port",
                "health_check_path",
                "env_overrides",
                "instance_type",
                "concurrency_per_replica",
                "container_secrets",
                "registry_credential",
                "secrets_generation",
                "incarnation",
                "assets",
            }
        )
        return hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:16]


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


class CallbackState(StrEnum):
    PENDING = "pending"  # not yet delivered; retries go on
    DELIVERED = "delivered"
    FAILED = "failed"  # given up (refused for good, or retried for too long)


class CallbackAttempt(BaseModel):
    at: float
    status: int | None = None  # the receiver's HTTP status; None if it could not be reached
    error: str | None = None
    duration_ms: float = 0.0


class CallbackLog(BaseModel):
    url: str
    state: CallbackState = CallbackState.PENDING
    attempts: int = 0
    # The latest attempts, oldest first (a long outage keeps only the last ones).
    log: list[CallbackAttempt] = Field(default_factory=list)
    delivered_at: float | None = None
    next_attempt_at: float | None = None


class JobRecord(Versioned):
    """An async request's state (the jobs KV bucket); its response is in the results stream."""

    response_id: str
    endpoint: str
    status: JobStatus = JobStatus.PENDING
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    replica_id: str | None = None
    # When the replica that took it became ready: later than created_at means a cold start.
    replica_ready_at: float | None = None
    # Why it failed, was cancelled or expired (a Berth reason, never the model's output).
    reason: str | None = None
    # The request's sequence in the requests stream: a queued job is removed by it.
    seq: int | None = None
    deadline: float | None = None  # unix time; past it, a queued job expires
    # For the queue position: requests queued ahead of it at submission, and how many
    # the endpoint's consumer had delivered by then.
    queued_ahead: int | None = None
    delivered_mark: int | None = None
    token_id: str | None = None  # who submitted it (signs its callback unless the endpoint does)
    callback: CallbackLog | None = None
    # W3C trace context of the request that made it: its result store and callback
    # deliveries join that trace.
    traceparent: str | None = None


class StartReplica(Versioned):
    replica_id: str
    spec: EndpointSpec


class StopReplica(Versioned):
    endpoint: str
    replica_id: str
    reason: str
    # Only stop if the replica has nothing in flight (scale-down); the agent decides atomically.
    only_if_idle: bool = True


class ReplicaRecord(Versioned):
    """A replica as its agent reports it, kept in the replicas KV bucket."""

    endpoint: str
    replica_id: str
    agent_id: str
    state: ReplicaState
    # EndpointSpec.replica_digest() of the config the replica was started with.
    digest: str = ""
    # Where the agent reaches the replica (for operators and benchmarks).
    url: str | None = None
    in_flight: int = 0
    restarts: int = 0
    started_at: float
    ready_at: float | None = None
    last_done_at: float | None = None
    # Seconds a request takes on this replica (moving average): queue wait estimates use it.
    service_s: float | None = None
    # Seconds spent serving requests since it started (summed over concurrent requests):
    # the scaler's measure of load. None from an agent too old to count them.
    busy_s: float | None = None
    reason: str | None = None
    updated_at: float = Field(default_factory=time.time)
    ttl: float = STALE_AFTER

    def fresh(self, now: float) -> bool:
        return now - self.updated_at < self.ttl


class EndpointHealth(Versioned):
    """An endpoint whose replicas keep failing to start, as the scaler's leader marks it
    (the health KV bucket); the key is deleted when a replica becomes ready again."""

    endpoint: str
    state: Literal["failing"] = "failing"
    reason: str
    failures: int
    since: float
    retry_at: float
    # EndpointSpec.replica_digest() of the config that fails.
    digest: str = ""


class GpuInfo(BaseModel):
    """One GPU of an agent: ``id`` is its index on the host, ``type`` its family (``h100``)."""

    id: str
    type: str
    name: str = ""
    uuid: str | None = None
    memory_mib: int = 0


class AgentRecord(Versioned):
    agent_id: str
    slots: int
    used_slots: int
    # What it can run: "process" (Python models), "docker" (images).
    runtimes: list[str] = Field(default_factory=lambda: ["process"])
    # The host: CPUs and memory (MiB), and its GPUs.
    cpus: int = 0
    memory_mib: int = 0
    gpus: list[GpuInfo] = Field(default_factory=list)
    # Ids of the GPUs its replicas hold.
    gpus_used: list[str] = Field(default_factory=list)
    updated_at: float = Field(default_factory=time.time)
    ttl: float = STALE_AFTER

    def fresh(self, now: float) -> bool:
        return now - self.updated_at < self.ttl

    def runs(self, spec: EndpointSpec) -> bool:
        return ("docker" if spec.image_url else "process") in self.runtimes

    def free_gpus(self, gpu_type: str) -> int:
        used = set(self.gpus_used)
        return sum(1 for g in self.gpus if g.type == gpu_type and g.id not in used)
