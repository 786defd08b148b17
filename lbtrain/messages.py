"""Pub/Sub message bodies (docs/architecture.md §5) and the push-envelope decoding every handler shares."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

TERMINAL_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "PARTIALLY_SUCCEEDED"})


class BadMessage(ValueError):
    """A message that can never succeed: answer 4xx so it goes to the dead-letter topic."""


# -- bounded JSON ------------------------------------------------------------------------------
# Every JSON body that comes from outside (HTTP bodies, push envelopes, message data) is parsed by
# `parse_json`: a body nested deeper than MAX_JSON_DEPTH is refused before `json.loads` sees it (the
# parser and everything after it recurse, and 50,000 `[` were a RecursionError, a 500).
MAX_JSON_DEPTH = 64
MAX_ATTEMPT = 1000
# What a run's or a rule's `params` may hold, so that Firestore (20 levels of maps and arrays, 64-bit
# integers, reserved `__…__` names, 1,500-byte field names, 1 MiB documents) never refuses it later.
MAX_PARAMS_DEPTH = 16
MAX_PARAMS_BYTES = 64 * 1024
MAX_KEY_BYTES = 256
_INT64 = (-(1 << 63), (1 << 63) - 1)
_JSON_TOKEN = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_RESERVED_KEY = re.compile(r"__.*__", re.DOTALL)


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if `raw` opens more than `limit` arrays/objects at once (brackets inside strings don't
    count). Linear, no recursion; stops at the first bracket past the limit."""
    depth = 0
    in_string = False
    for m in _JSON_TOKEN.finditer(raw):
        tok = m.group()
        if tok[0] == 0x5C:  # a backslash escape: skip the pair (inside a string; invalid JSON elsewhere)
            continue
        if tok == b'"':
            in_string = not in_string
        elif not in_string:
            if tok in (b"[", b"{"):
                depth += 1
                if depth > limit:
                    return True
            else:
                depth -= 1
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def parse_json(raw: bytes | str, *, what: str = "body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON: BadMessage (never another exception) for a body that is not UTF-8, not
    JSON (NaN/Infinity included), or nested deeper than `max_depth`."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise BadMessage(f"malformed JSON: {what} is not valid UTF-8") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadMessage(f"malformed JSON: {what} is not valid UTF-8") from None
    if json_depth_exceeds(raw, max_depth):
        raise BadMessage(f"malformed JSON: {what} is nested deeper than the limit of {max_depth} levels")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise BadMessage(f"malformed JSON: {what}: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw):  # "\ud800" alone decodes to a str no UTF-8 encoder (nor Firestore) takes
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadMessage(f"malformed JSON: {what} holds a lone UTF-16 surrogate, not text") from None
    return value


def check_storable(value: Any, what: str = "params", *, max_depth: int = MAX_PARAMS_DEPTH,
                   max_bytes: int = MAX_PARAMS_BYTES) -> None:
    """BadMessage unless `value` (parsed JSON) can be stored in Firestore as it is: nesting at most
    `max_depth`, integers within 64 bits, finite numbers, map keys non-empty, at most MAX_KEY_BYTES and
    not `__…__`, and at most `max_bytes` as JSON."""
    stack: list[tuple[Any, int, str]] = [(value, 0, what)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise BadMessage(f"{what} is nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str) or not key or len(key.encode("utf-8", "replace")) > MAX_KEY_BYTES \
                            or _RESERVED_KEY.fullmatch(key):
                        raise BadMessage(f"{path} has a key that cannot be stored: {str(key)[:40]!r} (keys are "
                                         f"non-empty, at most {MAX_KEY_BYTES} bytes, not __…__)")
                    stack.append((sub, depth + 1, f"{path}.{key[:40]}"))
            else:
                stack.extend((sub, depth + 1, f"{path}[{i}]") for i, sub in enumerate(item))
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not _INT64[0] <= item <= _INT64[1]:
                raise BadMessage(f"{path} is an integer outside 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadMessage(f"{path} is not a finite number")
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadMessage(f"{path} is not valid UTF-8 text") from None
        else:
            raise BadMessage(f"{path} holds a {type(item).__name__}, not JSON")
    try:
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError):
        raise BadMessage(f"{what} is not JSON") from None
    if size > max_bytes:
        raise BadMessage(f"{what} is larger than {max_bytes} bytes")


# Ids become Firestore document ids and file names: no "/", not "." or "..", not "__…__" (reserved).
ID_PATTERN = re.compile(r"(?!\.{1,2}\Z)(?!__.*__\Z)[A-Za-z0-9._-]{1,200}")


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) and bool(ID_PATTERN.fullmatch(value))


def _require_id(data: dict[str, Any], name: str) -> str:
    value = _require(data, name)
    if not is_valid_id(value):
        raise BadMessage(f"field {name!r} is not a valid id: {value[:80]!r}")
    return value


def _optional_id(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None or value == "":
        return ""
    if not is_valid_id(value):
        raise BadMessage(f"field {name!r} is not a valid id: {str(value)[:80]!r}")
    return value


def _require(data: dict[str, Any], name: str, kind: type = str) -> Any:
    value = data.get(name)
    if value is None or value == "":
        raise BadMessage(f"missing field {name!r}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadMessage(f"field {name!r} must be a {kind.__name__}")
    return value


def _optional_str(data: dict[str, Any], name: str, limit: int = 256) -> str:
    value = data.get(name)
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise BadMessage(f"field {name!r} must be a string of at most {limit} characters")
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
        params = data.get("params")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise BadMessage("field 'params' must be an object")
        check_storable(params)
        return cls(
            model_type=_require(data, "model_type"),
            model_run_id=_require(data, "model_run_id"),
            model_id=_optional_str(data, "model_id"),
            params=params,
            source=_optional_str(data, "source", 64) or "pubsub",
            idempotency_key=_optional_str(data, "idempotency_key"),
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
        if not 1 <= attempt <= MAX_ATTEMPT:
            raise BadMessage(f"field 'attempt' must be from 1 to {MAX_ATTEMPT}")
        action = data.get("action") or "launch"
        if action not in ("launch", "cancel"):
            raise BadMessage(f"field 'action' must be launch or cancel, not {str(action)[:80]!r}")
        return cls(run_id=_require_id(data, "run_id"), stage=_require_id(data, "stage"), attempt=attempt,
                   action=action)

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
        if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 <= attempt <= MAX_ATTEMPT:
            raise BadMessage(f"field 'attempt' must be an int from 0 to {MAX_ATTEMPT}")
        return cls(
            job_id=_job_id(_require(data, "job_id")),
            state=_require(data, "state")[:64],
            run_id=_optional_id(data, "run_id"),
            stage=_optional_id(data, "stage"),
            attempt=attempt,
            outputs_uri=str(data.get("outputs_uri") or ""),
            error=str(data.get("error") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _job_id(value: str) -> str:
    """A backend's job id (Vertex: digits or a resource name; local: a directory name). It keys a Firestore
    document ('/' → '_'), so it must make a valid id."""
    if not is_valid_id(value.replace("/", "_")):
        raise BadMessage(f"job id {value[:80]!r} is not a job id")
    return value


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
    labels = resource.get("labels")
    job_id = labels.get("job_id") if isinstance(labels, dict) else None
    if not job_id:
        raise BadMessage("ml_job log entry without resource.labels.job_id")
    return JobEvent(job_id=_job_id(str(job_id)), state=LOG_SINK_STATE)


def parse_job_event(data: Any) -> JobEvent:
    """The job-events topic carries JobEvents from jobs and, on GCP, log sink entries."""
    if isinstance(data, dict) and "resource" in data and "job_id" not in data:
        event = job_event_from_log_entry(data)
        if event is None:
            kind = data["resource"].get("type") if isinstance(data["resource"], dict) else None
            raise BadMessage(f"log entry for resource type {str(kind)[:80]!r} is not a job event")
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
    data = parse_json(body, what="message data") if body else {}
    attrs = msg.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise BadMessage("message attributes must be an object")
    message_id = msg.get("messageId") or msg.get("message_id") or ""
    if not isinstance(message_id, str | int) or isinstance(message_id, bool) or len(str(message_id)) > MAX_KEY_BYTES:
        raise BadMessage(f"message id must be a string of at most {MAX_KEY_BYTES} characters")
    return PushMessage(
        data=data,
        attributes={str(k): str(v) for k, v in attrs.items()},
        message_id=str(message_id),
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
