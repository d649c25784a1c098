"""The messages' format version: older and current ones read, a newer one is refused by name."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from shared.messages import FORMAT_VERSION, JobRecord, ReplicaRecord, StopReplica


def test_current_and_older_messages_read() -> None:
    job = JobRecord(response_id="j", endpoint="e")
    assert orjson.loads(job.model_dump_json())["v"] == FORMAT_VERSION
    assert JobRecord.model_validate_json(job.model_dump_json()) == job
    unversioned = {"response_id": "j", "endpoint": "e", "created_at": 1.0}
    assert JobRecord.model_validate(unversioned).v == FORMAT_VERSION


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (JobRecord, {"response_id": "j", "endpoint": "e"}),
        (StopReplica, {"endpoint": "e", "replica_id": "r", "reason": "x"}),
        (ReplicaRecord, {"endpoint": "e", "replica_id": "r", "agent_id": "a"}),
    ],
)
def test_a_newer_format_is_refused_with_its_reason(
    model: type[JobRecord | StopReplica | ReplicaRecord], fields: dict[str, str]
) -> None:
    with pytest.raises(ValidationError, match=rf"format v{FORMAT_VERSION + 1}, written by a newer"):
        model.model_validate({**fields, "v": FORMAT_VERSION + 1})
