"""Strict request checks for the Vertex fakes, against the v1 message types google-cloud-aiplatform ships.

Each request body the fakes accept is parsed into its real message type with
`json_format.ParseDict(..., ignore_unknown_fields=False)` (an unknown field or an enum value the type
does not have is refused), its `Required.` fields (read from the proto-plus docstrings, which keep the
`google.api.field_behavior` comments the runtime descriptors drop) must be set, and a training
pipeline's `trainingTaskInputs` is parsed into the typed schema of its `trainingTaskDefinition`
(`google.cloud.aiplatform.v1.schema.trainingjob.definition`). A refused request gets Vertex's error
shape: HTTP 400, `google.rpc.Status` INVALID_ARGUMENT with a message and `BadRequest` field violations.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

TRAINING_DEFINITION = "gs://google-cloud-aiplatform/schema/trainingjob/definition/"


class Invalid(Exception):
    """A request Vertex would refuse: `violations` are (field path, description)."""

    def __init__(self, violations: list[tuple[str, str]]):
        self.violations = violations
        super().__init__(message(violations))


def message(violations: list[tuple[str, str]]) -> str:
    if len(violations) == 1 and violations[0][1].startswith("Invalid JSON payload"):
        return violations[0][1]
    listed = "".join(f"{i}.Field: {f}; Message: {d}\t" for i, (f, d) in enumerate(violations, 1))
    return f"List of found errors:\t{listed}"


def bad_request(exc: Invalid) -> tuple[int, dict[str, Any]]:
    return 400, {"error": {"code": 400, "message": str(exc), "status": "INVALID_ARGUMENT", "details": [
        {"@type": "type.googleapis.com/google.rpc.BadRequest",
         "fieldViolations": [{"field": f, "description": d} for f, d in exc.violations]}]}}


def _types() -> Any:
    from google.cloud.aiplatform_v1 import types

    return types


# (method, family, verb) → (message class name, the field of the request the body is: "" for "*",
# the request field the URL carries). The REST transport's `body` of each rpc (aiplatform_v1).
REQUESTS: dict[tuple[str, str, str], tuple[str, str, str]] = {
    ("POST", "customJobs", ""): ("CustomJob", "custom_job", ""),
    ("POST", "customJobs", "cancel"): ("CancelCustomJobRequest", "", "name"),
    ("POST", "datasets", ""): ("Dataset", "dataset", ""),
    ("POST", "datasets", "import"): ("ImportDataRequest", "", "name"),
    ("POST", "trainingPipelines", ""): ("TrainingPipeline", "training_pipeline", ""),
    ("POST", "batchPredictionJobs", ""): ("BatchPredictionJob", "batch_prediction_job", ""),
    ("POST", "models", "upload"): ("UploadModelRequest", "", "parent"),
    ("POST", "endpoints", ""): ("Endpoint", "endpoint", ""),
    ("POST", "endpoints", "deployModel"): ("DeployModelRequest", "", "endpoint"),
    ("POST", "endpoints", "undeployModel"): ("UndeployModelRequest", "", "endpoint"),
}


@functools.cache
def _required(full_name: str) -> frozenset[str]:
    """The `Required.` fields of a v1 message (by its proto full name), from its proto-plus docstring."""
    cls: Any = _types()
    for part in full_name.removeprefix("google.cloud.aiplatform.v1.").split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            return frozenset()
    doc = getattr(cls, "__doc__", "") or ""
    return frozenset(re.findall(r"^\s+(\w+) \([^)]*\):\n\s+Required\.", doc, re.M))


def _missing(msg: Message, path: str) -> list[tuple[str, str]]:
    """Required fields left unset, through every set sub-message."""
    out: list[tuple[str, str]] = []
    descriptor = msg.DESCRIPTOR
    set_fields = {f.name: v for f, v in msg.ListFields()}
    if descriptor.full_name.startswith("google.cloud.aiplatform.v1."):
        for name in sorted(_required(descriptor.full_name)):
            field = descriptor.fields_by_name.get(name)
            real_oneof = field is not None and field.containing_oneof is not None and \
                len(field.containing_oneof.fields) > 1
            if field is not None and not real_oneof and name not in set_fields:
                out.append((f"{path}.{name}" if path else name, "Required field is not set."))
    for field, value in msg.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        sub = f"{path}.{field.name}" if path else field.name
        if field.is_repeated:
            for i, item in enumerate(value):
                out += _missing(item, f"{sub}[{i}]")
        else:
            out += _missing(value, sub)
    return out


def parse(type_name: str, body: Any, field: str = "") -> Message:
    """`body` as the v1 message `type_name` (e.g. "CustomJob"), strictly; Invalid if Vertex would refuse it."""
    cls = getattr(_types(), type_name)
    msg = cls.pb()()
    if not isinstance(body, dict):
        raise Invalid([(field or type_name, f"Invalid JSON payload received. Expected an object, got {body!r}")])
    try:
        json_format.ParseDict(body, msg, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        where = field or _snake(type_name)
        raise Invalid([(where, f"Invalid JSON payload received. {str(exc).splitlines()[0]} (at '{where}')")]) from None
    missing = _missing(msg, field)
    if missing:
        raise Invalid(missing)
    return msg


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def task_inputs_type(definition: str) -> Any:
    """The typed schema (proto-plus class) of a training task definition URI, or None if not one of them."""
    from google.cloud.aiplatform.v1.schema.trainingjob import definition as schemas

    if not definition.startswith(TRAINING_DEFINITION):
        return None
    stem = definition.removeprefix(TRAINING_DEFINITION).rsplit("_", 1)[0]  # automl_image_object_detection
    name = "".join(part.capitalize() for part in stem.split("_")).replace("Automl", "AutoMl") + "Inputs"
    return getattr(schemas, name, None)


def check(method: str, family: str, verb: str, resource: str, body: Any) -> None:
    """Raise Invalid if the request is one the fakes know and its body is not what Vertex accepts.
    `resource`: the resource name the URL carries (parent or name)."""
    known = REQUESTS.get((method, family, verb))
    if known is None:
        return
    type_name, body_field, url_field = known
    body = {} if body is None else body
    if url_field:
        body = {**body, _camel(url_field): resource} if isinstance(body, dict) else body
    msg = parse(type_name, body, body_field)
    bad = _labels_and_names(body, body_field)
    if bad:
        raise Invalid(bad)
    if type_name == "TrainingPipeline":
        _check_task_inputs(msg)


LABEL = re.compile(r"^[a-z0-9_-]{0,63}$")  # ≤ 63 chars of lowercase letters, digits, '_' and '-'


def _labels_and_names(body: Any, path: str) -> list[tuple[str, str]]:
    """Vertex's rules for `labels` (≤ 64; keys 1-63 chars starting with a lowercase letter; values
    ≤ 63 chars; lowercase letters, digits, '_' and '-') and `displayName` (≤ 128 characters)."""
    out: list[tuple[str, str]] = []
    if isinstance(body, list):
        for i, item in enumerate(body):
            out += _labels_and_names(item, f"{path}[{i}]")
        return out
    if not isinstance(body, dict):
        return out
    for key, value in body.items():
        where = f"{path}.{_snake(key)}" if path else _snake(key)
        if key == "labels" and isinstance(value, dict):
            if len(value) > 64:
                out.append((where, f"At most 64 labels are allowed, got {len(value)}."))
            for k, v in value.items():
                if not (re.match(r"^[a-z]", k) and LABEL.match(k)) or not isinstance(v, str) or not LABEL.match(v):
                    out.append((where, f"Label {k!r}: {v!r} is invalid: keys must start with a lowercase letter; "
                                       "keys and values can only contain lowercase letters, numeric characters, "
                                       "underscores and dashes, at most 63 characters."))
        elif key == "displayName" and isinstance(value, str) and len(value) > 128:
            out.append((where, f"The display name can be up to 128 characters long, got {len(value)}."))
        elif isinstance(value, dict | list):
            out += _labels_and_names(value, where)
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _check_task_inputs(pipeline: Message) -> None:
    definition = pipeline.training_task_definition  # type: ignore[attr-defined]
    schema = task_inputs_type(definition)
    if schema is None:
        raise Invalid([("training_pipeline.training_task_definition",
                        f"Training task definition {definition!r} is not a supported schema.")])
    inputs = json_format.MessageToDict(pipeline.training_task_inputs)  # type: ignore[attr-defined]
    msg = schema.pb()()
    try:
        json_format.ParseDict(inputs, msg, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise Invalid([("training_pipeline.training_task_inputs",
                        f"Invalid JSON payload received. {str(exc).splitlines()[0]} "
                        f"(at 'training_pipeline.training_task_inputs' as {schema.__name__})")]) from None


def parse_instance(instance: Any, detection: bool) -> Message:
    """A batch-prediction instance line as an AutoML image model takes it (the predict/instance schema)."""
    from google.cloud.aiplatform.v1.schema.predict import instance as schemas

    schema = schemas.ImageObjectDetectionPredictionInstance if detection else \
        schemas.ImageClassificationPredictionInstance
    msg = schema.pb()()
    try:
        json_format.ParseDict(instance, msg, ignore_unknown_fields=False)
    except (json_format.ParseError, AttributeError) as exc:
        raise Invalid([("instance", f"Invalid instance for {schema.__name__}: {str(exc).splitlines()[0]}")]) from None
    if not msg.content:  # type: ignore[attr-defined]
        raise Invalid([("instance.content", "Required field is not set.")])
    return msg


# What each answered request returns (aiplatform_v1), for the fakes' own answers to be checked too:
# a field the client would silently drop (REST clients parse with ignore_unknown_fields=True) is a fake bug.
RESOURCE_TYPE = {"customJobs": "CustomJob", "trainingPipelines": "TrainingPipeline",
                 "batchPredictionJobs": "BatchPredictionJob", "datasets": "Dataset", "models": "Model",
                 "endpoints": "Endpoint"}
OPERATION_VERBS = {"import", "upload", "deployModel", "undeployModel"}


def response_type(method: str, family: str, rid: str, verb: str) -> str:
    """The v1 message name of the answer ("Operation" for a long-running one, "" if not known)."""
    if family not in RESOURCE_TYPE:
        return ""
    if verb in OPERATION_VERBS or method == "DELETE" or (
            method == "POST" and not rid and family in ("datasets", "endpoints")):
        return "Operation"
    if verb == "cancel":
        return "Empty"
    if method == "GET" and not rid:
        return f"List{family[0].upper()}{family[1:]}Response"
    if method == "POST" and not rid or method == "GET":
        return RESOURCE_TYPE[family]
    return ""


def check_response(type_name: str, answer: Any) -> None:
    """Raise ValueError if `answer` is not a valid `type_name` (v1 message, "Operation" or "Empty")."""
    if type_name == "Operation":
        from google.longrunning import operations_pb2

        msg: Message = operations_pb2.Operation()
    elif type_name == "Empty":
        from google.protobuf import empty_pb2

        msg = empty_pb2.Empty()
    else:
        msg = getattr(_types(), type_name).pb()()
    try:
        json_format.ParseDict(answer, msg, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ValueError(f"the fake's answer is not a valid {type_name}: {str(exc).splitlines()[0]}") from None
