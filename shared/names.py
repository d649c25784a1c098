"""Names that are part of Berth's NATS contract (see docs/design.md).

Changing a name here changes the wire; agents, scalers and API instances of
different versions must agree on them.
"""

from __future__ import annotations

import re

REQUESTS_STREAM = "BERTH_REQUESTS"
REQUEST_SUBJECT_PREFIX = "berth.req."
# Holds one message, always: the requests stream's tail pin (broker/streams.py). An
# endpoint name cannot start with "_", so no endpoint's queue is this subject.
TAIL_PIN_SUBJECT = f"{REQUEST_SUBJECT_PREFIX}_tail"
EVENTS_STREAM = "BERTH_EVENTS"
EVENT_SUBJECT_PREFIX = "berth.evt."
DEMAND_SUBJECT_PREFIX = "berth.demand."
LOGS_STREAM = "BERTH_LOGS"
LOG_SUBJECT_PREFIX = "berth.log."
AGENT_SUBJECT_PREFIX = "berth.agent."

KV_ENDPOINTS = "berth_endpoints"
KV_REPLICAS = "berth_replicas"
KV_AGENTS = "berth_agents"
KV_LEASES = "berth_leases"
# endpoint name → EndpointHealth, while its replicas keep failing to start.
KV_HEALTH = "berth_health"
# A scaler that stops renewing loses its lease this long after its last renewal.
LEASE_TTL = 5.0
OBJ_MODELS = "berth_models"
# Asset contents (the asset library, /v1/assets), one object per sha256: identical
# content is stored once however many assets name it.
OBJ_ASSETS = "berth_assets"

# An endpoint name is a DNS label: it becomes a subject token, a KV key part,
# a consumer name and (with BERTH_ENDPOINT_DOMAIN) a host name.
ENDPOINT_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def request_subject(endpoint: str) -> str:
    return f"{REQUEST_SUBJECT_PREFIX}{endpoint}"


def consumer_name(endpoint: str) -> str:
    return f"ep-{endpoint}"


def demand_subject(endpoint: str) -> str:
    return f"{DEMAND_SUBJECT_PREFIX}{endpoint}"


def event_subject(kind: str, endpoint: str) -> str:
    return f"{EVENT_SUBJECT_PREFIX}{kind}.{endpoint}"


def log_subject(endpoint: str, replica_id: str = "*") -> str:
    return f"{LOG_SUBJECT_PREFIX}{endpoint}.{replica_id}"


def agent_subject(agent_id: str, verb: str) -> str:
    return f"{AGENT_SUBJECT_PREFIX}{agent_id}.{verb}"


def replica_key(endpoint: str, replica_id: str) -> str:
    return f"{endpoint}.{replica_id}"


# Agents ask the API for a replica's secrets here (core NATS request/reply, sealed answer).
REPLICA_SECRETS_SUBJECT = "berth.ctl.replica-secrets"
API_QUEUE_GROUP = "berth-api"

# Async jobs (X-OctoAI-Async): their state in KV, their results in a stream, by request id.
RESULTS_STREAM = "BERTH_RESULTS"
RESULT_SUBJECT_PREFIX = "berth.res."
KV_JOBS = "berth_jobs"


def result_subject(request_id: str) -> str:
    return f"{RESULT_SUBJECT_PREFIX}{request_id}"


# Idempotency-Key → the job it created (hashed with the endpoint and the caller).
KV_IDEMPOTENCY = "berth_idempotency"
# Callbacks due: one message per job that has a callback_url, a work queue for the API's dispatchers.
CALLBACKS_STREAM = "BERTH_CALLBACKS"
CALLBACK_SUBJECT_PREFIX = "berth.cb."
CALLBACKS_CONSUMER = "callbacks"
# "Stop request <id> if you run it" (core NATS; payload: the request id).
CANCEL_SUBJECT_PREFIX = "berth.cancel."
# "Does a live agent still answer request <id>?" (core NATS; payload: the request id),
# asked before running a request delivered again; every agent answers "held" or "free".
HELD_SUBJECT_PREFIX = "berth.held."
# Large request bodies and responses, by claim check (the message carries the object's name).
OBJ_BODIES = "berth_bodies"


def callback_subject(request_id: str) -> str:
    return f"{CALLBACK_SUBJECT_PREFIX}{request_id}"


def cancel_subject(endpoint: str) -> str:
    return f"{CANCEL_SUBJECT_PREFIX}{endpoint}"


def held_subject(endpoint: str) -> str:
    return f"{HELD_SUBJECT_PREFIX}{endpoint}"
