"""Pub/Sub message bodies (docs/architecture.md §5) and the push-envelope decoding every handler shares."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, field
from typing import Any

TERMINAL_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "PARTIALLY_SUCCEEDED"})


class BadMessage(ValueError):
    """A message that can never succeed: answer 4xx so it goes to the dead-letter topic."""


def _require(data: dict[str, Any], name: str, kind: type = str) -> Any:
    value = data.get(name)
    if value is None or value == "":
        raise BadMessage(f"missing field {name!r}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadMessage(f"field {name!r} must be a {kind.__name__}")
    return value


def _obj(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadMessage("message body must be a JSON object")
    return data


@dataclass(frozen=True)
class RunRequest:
    model_type: str
    model_run_id: str
    model_id: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    source: str = "pubsub"
    idempotency_key: str = ""

    @classmethod
    def from_dict(cls, data: Any) -> RunRequest:
        data = _obj(data)
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise BadMessage("field 'params' must be an object")
        return cls(
            model_type=_require(data, "model_type"),
            model_run_id=_require(data, "model_run_id"),
            model_id=str(data.get("model_id") or ""),
            params=params,
            source=str(data.get("source") or "pubsub"),
            idempotency_key=str(data.get("idempotency_key") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepMessage:
    """Launch a step's job, or (action "cancel") cancel it: only launchers hold the job backend's
    client, so the ingress never loads the Vertex SDK."""

    run_id: str
    stage: str
    attempt: int
    action: str = "launch"

    @classmethod
    def from_dict(cls, data: Any) -> StepMessage:
        data = _obj(data)
        attempt = _require(data, "attempt", int)
        if attempt < 1:
            raise BadMessage("field 'attempt' must be >= 1")
        action = data.get("action") or "launch"
        if action not in ("launch", "cancel"):
            raise BadMessage(f"field 'action' must be launch or cancel, not {action!r}")
        return cls(run_id=_require(data, "run_id"), stage=_require(data, "stage"), attempt=attempt, action=action)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.action == "launch":
            del data["action"]
        return data

    def attributes(self) -> dict[str, str]:
        return {"run_id": self.run_id, "stage": self.stage}


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    state: str
    run_id: str = ""
    stage: str = ""
    attempt: int = 0
    outputs_uri: str = ""
    error: str = ""

    @classmethod
    def from_dict(cls, data: Any) -> JobEvent:
        data = _obj(data)
        attempt = data.get("attempt") or 0
        if not isinstance(attempt, int):
            raise BadMessage("field 'attempt' must be an int")
        return cls(
            job_id=_require(data, "job_id"),
            state=_require(data, "state"),
            run_id=str(data.get("run_id") or ""),
            stage=str(data.get("stage") or ""),
            attempt=attempt,
            outputs_uri=str(data.get("outputs_uri") or ""),
            error=str(data.get("error") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LOG_SINK_STATE = "LOGGED"  # a Cloud Logging entry says something happened; the backend says what


# Cloud Run job executions as job ids: `crj.{cloud run job}.{execution}` (Cloud Run names hold no dots; Vertex
# ids are digits, local ids job names), so an id alone says which backend owns it.
CLOUD_RUN_JOB_ID_PREFIX = "crj."
CLOUD_RUN_EXECUTION_LABEL = "run.googleapis.com/execution_name"


def cloud_run_job_id(job: str, execution: str) -> str:
    return f"{CLOUD_RUN_JOB_ID_PREFIX}{job}.{execution}"


def parse_cloud_run_job_id(job_id: str) -> tuple[str, str]:
    """`crj.J.E` → (J, E); BadMessage for anything else."""
    parts = job_id.split(".")
    if len(parts) != 3 or f"{parts[0]}." != CLOUD_RUN_JOB_ID_PREFIX or not parts[1] or not parts[2] \
            or any("/" in p for p in parts):
        raise BadMessage(f"not a Cloud Run job id: {job_id[:120]!r}")
    return parts[1], parts[2]


def _cloud_run_event(entry: dict[str, Any], resource: dict[str, Any]) -> JobEvent:
    """A Cloud Run job's system log entry names its job (`resource.labels.job_name`) and execution
    (`labels."run.googleapis.com/execution_name"`); the execution's state is re-read from Cloud Run."""
    job = str((resource.get("labels") or {}).get("job_name") or "")
    labels = entry.get("labels") if isinstance(entry.get("labels"), dict) else {}
    execution = str(labels.get(CLOUD_RUN_EXECUTION_LABEL) or "")
    if not job or not execution:
        raise BadMessage("cloud_run_job log entry without resource.labels.job_name and an execution_name label")
    job_id = cloud_run_job_id(job, execution)
    parse_cloud_run_job_id(job_id)
    return JobEvent(job_id=job_id, state=LOG_SINK_STATE)


def job_event_from_log_entry(entry: Any) -> JobEvent | None:
    """A Cloud Logging sink entry for a Vertex AI job (`resource.type="ml_job"`) or a Cloud Run job
    execution (`resource.type="cloud_run_job"`) → a JobEvent hint.

    The entry only names the job (`resource.labels.job_id`, or the Cloud Run job and execution); its
    state is always re-read from the backend. Entries for other resource types are not job events (None).
    """
    if not isinstance(entry, dict):
        return None
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("type") == "cloud_run_job":
        return _cloud_run_event(entry, resource)
    if not isinstance(resource, dict) or resource.get("type") != "ml_job":
        return None
    job_id = str((resource.get("labels") or {}).get("job_id") or "")
    if not job_id:
        raise BadMessage("ml_job log entry without resource.labels.job_id")
    return JobEvent(job_id=job_id, state=LOG_SINK_STATE)


def parse_job_event(data: Any) -> JobEvent:
    """The job-events topic carries JobEvents from jobs and, on GCP, log sink entries."""
    if isinstance(data, dict) and "resource" in data and "job_id" not in data:
        event = job_event_from_log_entry(data)
        if event is None:
            raise BadMessage(f"log entry for resource type {data['resource'].get('type')!r} is not a job event")
        return event
    return JobEvent.from_dict(data)


@dataclass(frozen=True)
class PushMessage:
    """The part of a Pub/Sub push envelope handlers need."""

    data: Any
    attributes: dict[str, str]
    message_id: str
    subscription: str = ""


def decode_push(envelope: Any) -> PushMessage:
    """Decode `{"message": {"data": b64, "attributes", "messageId"}, "subscription"}`."""
    envelope = _obj(envelope)
    msg = envelope.get("message")
    if not isinstance(msg, dict):
        raise BadMessage("push envelope has no 'message' object")
    raw = msg.get("data", "")
    try:
        body = base64.b64decode(raw, validate=True) if raw else b""
    except (binascii.Error, TypeError, ValueError) as exc:  # ValueError: non-ASCII text
        raise BadMessage(f"message data is not base64: {exc}") from None
    try:
        data = json.loads(body) if body else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"message data is not JSON: {exc}") from None
    attrs = msg.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise BadMessage("message attributes must be an object")
    return PushMessage(
        data=data,
        attributes={str(k): str(v) for k, v in attrs.items()},
        message_id=str(msg.get("messageId") or msg.get("message_id") or ""),
        subscription=str(envelope.get("subscription") or ""),
    )


def encode_push(data: dict[str, Any], attributes: dict[str, str] | None = None, message_id: str = "1",
                subscription: str = "projects/demo/subscriptions/test") -> dict[str, Any]:
    """Build a push envelope like Pub/Sub's (used by tests, benchmarks and the CLI)."""
    return {
        "message": {
            "data": base64.b64encode(json.dumps(data).encode()).decode(),
            "attributes": attributes or {},
            "messageId": message_id,
        },
        "subscription": subscription,
    }
