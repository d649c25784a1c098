"""Settings, one class per process kind, read from ``BERTH_*`` environment variables.

Built in each entrypoint and passed down; nothing here runs at import time.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.instance_types import parse_instance_type

__all__ = [
    "AgentSettings",
    "ApiSettings",
    "CommonSettings",
    "ScalerSettings",
    "UpSettings",
    "default_data_dir",
]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "berth"


class CommonSettings(BaseSettings):
    """What every Berth process needs: where state lives and where NATS is."""

    model_config = SettingsConfigDict(env_prefix="BERTH_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    nats_url: str = "nats://127.0.0.1:4222"
    # Bound on every call that crosses to NATS (publish ack, KV, consumer info).
    nats_timeout: float = 5.0
    # Copies JetStream keeps of Berth's streams, buckets and object stores when it makes
    # them: 1 for one nats-server, 3 for a three-node cluster (docs/reliability.md).
    nats_replicas: int = Field(1, ge=1, le=5)
    log_level: str = "INFO"
    # "json": one JSON object a line (time, level, process, logger, message, and the
    # trace and span ids when tracing is on), for log shippers.
    log_format: Literal["text", "json"] = "text"
    # Prometheus metrics of a scaler or an agent (the API's are at /metrics): served on
    # this address when a port is set. Loopback by default: scrape from the host, or set
    # 0.0.0.0 behind a firewall (docs/observability.md).
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # JetStream hands a request to another replica this long after the last sign of
    # life from the agent working on it (so a dead agent's requests run elsewhere this
    # soon); agents send in-progress acks every fifth of it.
    ack_wait: float = Field(default=5.0, ge=1.0)
    # What one model archive may unpack to (checked at upload and again before an agent
    # unpacks it): bytes in all, members, and unpacked bytes per archive byte.
    model_max_unpacked: int = 2 * 1024 * 1024 * 1024
    model_max_members: int = 20_000
    model_max_ratio: float = 200.0


class TrainerSettings(BaseModel):
    """What the operator gives one engine's trainer (BERTH_TRAINERS)."""

    model_config = ConfigDict(extra="forbid")

    # Where its replica runs (the example's own default when unset).
    instance_type: str | None = None
    # Its replica's environment: where the base weights are, for one.
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str | None) -> str | None:
        if value is not None:
            parse_instance_type(value)  # a typo fails at start, not at the first tune
        return value


class ApiSettings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: SecretStr | None = None
    database_url: str | None = None
    # Host-based routing: <endpoint>.<endpoint_domain> serves that endpoint.
    endpoint_domain: str | None = None
    # External base URL used in responses (endpoint URLs); derived from host/port if unset.
    public_url: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    # The asset library: the largest upload taken, and the owner name assets carry
    # (OctoAI's tenant; ``owner/name`` lookups use it).
    asset_max_bytes: int = Field(50 * 1024**3, gt=0)
    # Assets created from a URL: fetched from public addresses only unless this is set
    # (as callbacks are; api/asset_imports.py).
    asset_url_allow_private: bool = False
    # On SIGTERM, /healthz answers 503 for this many seconds while requests are still
    # served, so that a load balancer's health check takes the instance out before it
    # stops accepting; then the usual graceful stop. 0: stop at once (one instance).
    drain_seconds: float = Field(0.0, ge=0, le=300)
    tenant: str = Field("berth", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    default_request_timeout: float = 300.0
    # How long a cached endpoint lookup on the data plane may be stale.
    endpoint_cache_ttl: float = 2.0
    # Async results (and job states) are kept this long.
    result_ttl: float = 24 * 3600.0
    # Callbacks: the first retry waits callback_backoff seconds, each next one twice as
    # long (at most an hour, plus jitter); retries stop callback_retry_for seconds after
    # the job ended. Each attempt may take callback_timeout seconds.
    callback_backoff: float = 5.0
    callback_retry_for: float = 12 * 3600.0
    callback_timeout: float = 10.0
    # Whether callback URLs may reach loopback, private, link-local or metadata addresses.
    # Off: every address a URL's host resolves to is checked at each delivery, and the
    # connection goes to a checked address (shared/egress.py). `berth up` turns it on
    # for a one-machine install, and says so.
    callback_allow_private: bool = False
    # A rotated webhook secret still signs callbacks this long (both signatures are sent).
    webhook_secret_grace: float = 24 * 3600.0
    # How long a verified API token stays cached here: a token deleted through another
    # API instance keeps working on this one for at most this long.
    token_cache_ttl: float = 2.0
    # The example catalogue's folder (deploy/Dockerfile's image sets it: an installed
    # Berth has no source tree beside it); unset, examples/ of Berth's tree.
    examples_dir: Path | None = None
    # While the database does not answer, a token that passed the full check within this
    # many seconds still works (its expiry still counts): inference goes on through a
    # database restart or failover. 0: every token fails with 503 until it is back.
    token_stale_ttl: float = Field(600.0, ge=0)
    # The console's charts: one point per metrics_interval seconds, the last hour kept
    # (api/metrics.py); the live endpoints list refreshes every live_interval seconds.
    metrics_interval: float = Field(10.0, gt=0)
    live_interval: float = Field(1.0, gt=0)
    # Fine-tuning: per base engine, where its trainer runs and what its replica needs,
    # as JSON, e.g. {"image/stable-diffusion-xl-v1-0": {"instance_type": "gpu.h100",
    # "env": {"SDXL_WEIGHTS": "/models/sdxl-base-1.0"}}} (api/tuning.py).
    trainers: dict[str, TrainerSettings] = Field(default_factory=dict)

    # Secrets and registry credentials: Vault when vault_addr is set, else the local
    # store in the database, sealed with secret_key (or the 0600 key file).
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    vault_addr: str | None = None
    vault_token: SecretStr | None = None
    vault_role_id: str | None = None
    vault_secret_id: SecretStr | None = None
    # Or read both from files (written by a Vault agent or an init job).
    vault_role_id_file: Path | None = None
    vault_secret_id_file: Path | None = None
    vault_approle_mount: str = "approle"
    vault_mount: str = "secret"
    vault_prefix: str = "berth"
    vault_namespace: str | None = None
    vault_ca_cert: str | None = None
    vault_timeout: float = 5.0

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'berth.db'}"

    def static_admin_token(self) -> str | None:
        """BERTH_ADMIN_TOKEN, if set and not empty."""
        return self.admin_token.get_secret_value() or None if self.admin_token else None

    def resolved_secret_key_file(self) -> Path:
        return self.secret_key_file or self.data_dir / "secret.key"

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class AgentSettings(CommonSettings):
    agent_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0].lower())
    # Address replicas listen on; the agent forwards requests there.
    replica_host: str = "127.0.0.1"
    heartbeat_interval: float = 2.0
    # Time from start to a 200 on the health check before the replica is declared failed.
    startup_budget: float = 300.0
    health_interval: float = 2.0
    health_failures_to_restart: int = 3
    # How long one idle pull waits before asking again (bounds stop latency).
    pull_expires: float = 2.0
    # Before running a request delivered again, an agent asks the fleet whether a live
    # agent still answers it (its in-progress acks were late: a stalled process, a
    # NATS restart), waiting this long for an agent that has not answered.
    held_wait: float = Field(default=2.0, gt=0)
    stop_grace: float = 10.0
    # A replica's answer larger than this is replaced by a 502 (larger than a NATS
    # message, it travels through the object store).
    max_response_bytes: int = 64 * 1024 * 1024
    # A token with the `agent` (or `admin`) scope: the API hands a replica's secrets
    # and registry credential only to an agent that shows one.
    agent_token: SecretStr | None = None
    # Container replicas: the Docker engine (unset: DOCKER_HOST, else the default socket;
    # "none": this agent runs no images), and each container's limits.
    docker_host: str | None = None
    docker_memory: str = "8g"
    docker_pids: int = 4096
    # GPUs offered: unset = what nvidia-smi lists; or declared, e.g. "a10g:4", "h100:2,l4",
    # "none". Each GPU replica gets its own devices (workers/gpus.py).
    gpus: str | None = None
    # Replicas this agent runs at once (GPU replicas also need free GPUs of their type).
    slots: int = 8
    # An unpacked model is removed this long after the last replica using it ended.
    model_keep: float = 600.0
    # The agent's asset cache (content-addressed): least recently used assets that no
    # replica holds are removed to stay under this many bytes.
    asset_cache_bytes: int = Field(100 * 1024**3, gt=0)
    # Process replicas' sandbox (workers/sandbox.py, docs/secrets.md): "auto" applies
    # Landlock where the kernel has it and warns where it does not; "required" fails a
    # replica's start without it; "off" runs models with the agent's own file access.
    sandbox: Literal["auto", "required", "off"] = "auto"
    # An agent running as root runs process replicas as uid 0 with no capabilities; with
    # a base set, as uid/gid base + slot instead (Python and Berth must then be readable
    # by other users).
    replica_uid_base: int = Field(default=0, ge=0)
    # Folders every process replica may also write, separated by os.pathsep (a shared
    # volume, say). Berth's data directory may not be one of them.
    replica_writable: str = ""


# The share of its time a replica should be busy when the scaler sizes an endpoint to its
# steady load: the headroom keeps queue waits short under random (Poisson) arrivals.
TARGET_UTILISATION = 0.5


class ScalerSettings(CommonSettings):
    tick_interval: float = 1.0
    # A start that has not become a replica record within this long is forgotten.
    start_timeout: float = 330.0
    # After a failed start, wait this long (doubling, capped) before trying again.
    start_backoff: float = 2.0
    start_backoff_max: float = 60.0
    # After this many failed starts in a row an endpoint is marked failing (its
    # reason shown on it and in events) until a replica becomes ready.
    failing_after: int = Field(default=4, ge=1)
    # How busy replicas may be on average before more start (scaler/policy.py): lower
    # waits less and spends more replica time.
    target_utilisation: float = Field(default=TARGET_UTILISATION, gt=0.0, le=1.0)


class UpSettings(ApiSettings, AgentSettings, ScalerSettings):
    """``berth up``: everything on one machine, with an embedded nats-server."""

    nats_port: int = 0  # 0 = any free port, written to <data_dir>/nats-url
    # One machine: a receiver on this host is the usual case (printed at start-up), and
    # so is an asset served from it.
    callback_allow_private: bool = True
    asset_url_allow_private: bool = True
