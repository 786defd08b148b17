"""Message bodies and Pub/Sub push-envelope decoding (lbtrain/messages.py)."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from lbtrain.messages import (
    BadMessage,
    JobEvent,
    PushMessage,
    RunRequest,
    StepMessage,
    decode_push,
    encode_push,
)

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture()
def golden() -> dict[str, Any]:
    return json.loads((DATA / "pubsub_push_step.json").read_text(encoding="utf-8"))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- decode_push -------------------------------------------------------------------------

def test_decode_golden_push_envelope(golden: dict[str, Any]) -> None:
    msg = decode_push(golden)
    assert isinstance(msg, PushMessage)
    assert msg.data == {"run_id": "3f2a9c1e7b5d4a60", "stage": "train", "attempt": 2}
    assert msg.attributes == {"run_id": "3f2a9c1e7b5d4a60", "stage": "train"}
    assert msg.message_id == "11728470592365431"
    assert msg.subscription == "projects/lbtrain-prod/subscriptions/prod-step-train-push"
    assert StepMessage.from_dict(msg.data) == StepMessage("3f2a9c1e7b5d4a60", "train", 2)


def test_decode_accepts_snake_case_message_id(golden: dict[str, Any]) -> None:
    del golden["message"]["messageId"]
    assert decode_push(golden).message_id == "11728470592365431"


def test_encode_push_round_trips_through_decode() -> None:
    data = {"run_id": "r1", "stage": "etl", "attempt": 1}
    env = encode_push(data, {"run_id": "r1", "stage": "etl"}, message_id="42",
                      subscription="projects/p/subscriptions/s")
    msg = decode_push(json.loads(json.dumps(env)))
    assert msg == PushMessage(data=data, attributes={"run_id": "r1", "stage": "etl"}, message_id="42",
                              subscription="projects/p/subscriptions/s")


def test_attribute_values_become_strings() -> None:
    env = encode_push({"a": 1})
    env["message"]["attributes"] = {"n": 3}
    assert decode_push(env).attributes == {"n": "3"}


@pytest.mark.parametrize("envelope", [None, [], "text", 1])
def test_envelope_must_be_an_object(envelope: Any) -> None:
    with pytest.raises(BadMessage):
        decode_push(envelope)


@pytest.mark.parametrize("message", [None, "x", [], 5])
def test_envelope_without_message_object(message: Any) -> None:
    env: dict[str, Any] = {"subscription": "s"}
    if message is not None:
        env["message"] = message
    with pytest.raises(BadMessage, match="message"):
        decode_push(env)


@pytest.mark.parametrize("data", ["not base64!", "abc", "@@@@", "eyJh\nIjoxfQ"])
def test_bad_base64_is_a_bad_message(golden: dict[str, Any], data: str) -> None:
    golden["message"]["data"] = data
    with pytest.raises(BadMessage, match="base64"):
        decode_push(golden)


def test_non_ascii_data_is_a_bad_message(golden: dict[str, Any]) -> None:
    # Not base64 either; must be refused as BadMessage (→ 400), not escape as a bare ValueError (→ 500).
    golden["message"]["data"] = "éàü"
    with pytest.raises(BadMessage, match="base64"):
        decode_push(golden)


@pytest.mark.parametrize("data", [5, ["eyJ9"], {"a": 1}])
def test_data_of_wrong_type_is_a_bad_message(golden: dict[str, Any], data: Any) -> None:
    golden["message"]["data"] = data
    with pytest.raises(BadMessage):
        decode_push(golden)


@pytest.mark.parametrize("raw", [b"not json", b"{", b"\xff\xfe\x00", b"{'single': 'quotes'}"])
def test_data_that_is_not_json_is_a_bad_message(golden: dict[str, Any], raw: bytes) -> None:
    golden["message"]["data"] = _b64(raw)
    with pytest.raises(BadMessage, match="JSON"):
        decode_push(golden)


@pytest.mark.parametrize("attrs", [["a"], "a=b", 3])
def test_attributes_must_be_an_object(golden: dict[str, Any], attrs: Any) -> None:
    golden["message"]["attributes"] = attrs
    with pytest.raises(BadMessage, match="attributes"):
        decode_push(golden)


def test_missing_data_decodes_to_empty_and_then_fails_validation(golden: dict[str, Any]) -> None:
    del golden["message"]["data"]
    msg = decode_push(golden)
    assert msg.data == {}
    with pytest.raises(BadMessage, match="missing field"):
        StepMessage.from_dict(msg.data)


# -- StepMessage -------------------------------------------------------------------------

def test_step_message_round_trip() -> None:
    msg = StepMessage("r1", "evaluate", 3)
    assert StepMessage.from_dict(msg.to_dict()) == msg
    assert StepMessage.from_dict(json.loads(json.dumps(msg.to_dict()))) == msg
    assert msg.attributes() == {"run_id": "r1", "stage": "evaluate"}


@pytest.mark.parametrize("field", ["run_id", "stage", "attempt"])
def test_step_message_missing_field_is_named(field: str) -> None:
    data = {"run_id": "r1", "stage": "etl", "attempt": 1}
    del data[field]
    with pytest.raises(BadMessage, match=field):
        StepMessage.from_dict(data)


@pytest.mark.parametrize("field,value", [
    ("run_id", 7), ("run_id", ["r"]), ("stage", {"s": 1}), ("stage", True),
    ("attempt", "1"), ("attempt", 1.0), ("attempt", True), ("attempt", [1]),
])
def test_step_message_wrong_type_is_named(field: str, value: Any) -> None:
    data: dict[str, Any] = {"run_id": "r1", "stage": "etl", "attempt": 1, field: value}
    with pytest.raises(BadMessage, match=field):
        StepMessage.from_dict(data)


@pytest.mark.parametrize("attempt", [0, -1, -100])
def test_step_message_attempt_below_one_is_refused(attempt: int) -> None:
    with pytest.raises(BadMessage, match="attempt"):
        StepMessage.from_dict({"run_id": "r1", "stage": "etl", "attempt": attempt})


@pytest.mark.parametrize("data", [None, [], "x", 3])
def test_step_message_body_must_be_an_object(data: Any) -> None:
    with pytest.raises(BadMessage):
        StepMessage.from_dict(data)


def test_step_message_empty_string_counts_as_missing() -> None:
    with pytest.raises(BadMessage, match="run_id"):
        StepMessage.from_dict({"run_id": "", "stage": "etl", "attempt": 1})


# -- RunRequest --------------------------------------------------------------------------

def test_run_request_round_trip() -> None:
    req = RunRequest(model_type="text_single_classification", model_run_id="mr1", model_id="m1",
                     params={"noop": {"sleep": {"train": 1}}}, source="api", idempotency_key="k1")
    assert RunRequest.from_dict(req.to_dict()) == req
    assert RunRequest.from_dict(json.loads(json.dumps(req.to_dict()))) == req


def test_run_request_defaults() -> None:
    req = RunRequest.from_dict({"model_type": "t", "model_run_id": "mr"})
    assert req == RunRequest(model_type="t", model_run_id="mr", model_id="", params={}, source="pubsub",
                             idempotency_key="")


@pytest.mark.parametrize("field", ["model_type", "model_run_id"])
def test_run_request_missing_field_is_named(field: str) -> None:
    data = {"model_type": "t", "model_run_id": "mr"}
    del data[field]
    with pytest.raises(BadMessage, match=field):
        RunRequest.from_dict(data)


@pytest.mark.parametrize("field,value", [("model_type", 1), ("model_run_id", ["mr"]), ("model_run_id", False)])
def test_run_request_wrong_type_is_named(field: str, value: Any) -> None:
    data: dict[str, Any] = {"model_type": "t", "model_run_id": "mr", field: value}
    with pytest.raises(BadMessage, match=field):
        RunRequest.from_dict(data)


@pytest.mark.parametrize("params", [[1, 2], "x", 3])
def test_run_request_params_must_be_an_object(params: Any) -> None:
    with pytest.raises(BadMessage, match="params"):
        RunRequest.from_dict({"model_type": "t", "model_run_id": "mr", "params": params})


def test_run_request_to_dict_is_a_copy_of_values() -> None:
    req = RunRequest(model_type="t", model_run_id="mr", params={"a": {"b": 1}})
    d = req.to_dict()
    d["params"]["a"]["b"] = 2
    assert req.params == {"a": {"b": 1}}


# -- JobEvent ----------------------------------------------------------------------------

def test_job_event_round_trip() -> None:
    ev = JobEvent(job_id="dev-r1-etl-a1", state="FAILED", run_id="r1", stage="etl", attempt=1,
                  outputs_uri="/x/runs/r1/etl/a1", error="boom")
    assert JobEvent.from_dict(ev.to_dict()) == ev
    assert JobEvent.from_dict(json.loads(json.dumps(ev.to_dict()))) == ev


def test_job_event_minimal() -> None:
    ev = JobEvent.from_dict({"job_id": "123", "state": "SUCCEEDED"})
    assert ev == JobEvent(job_id="123", state="SUCCEEDED")
    assert ev.attempt == 0 and ev.run_id == ""


@pytest.mark.parametrize("field", ["job_id", "state"])
def test_job_event_missing_field_is_named(field: str) -> None:
    data = {"job_id": "j", "state": "SUCCEEDED"}
    del data[field]
    with pytest.raises(BadMessage, match=field):
        JobEvent.from_dict(data)


@pytest.mark.parametrize("attempt", ["1", 1.5, [1]])
def test_job_event_attempt_must_be_an_int(attempt: Any) -> None:
    with pytest.raises(BadMessage, match="attempt"):
        JobEvent.from_dict({"job_id": "j", "state": "SUCCEEDED", "attempt": attempt})


def test_golden_file_is_not_mutated_between_tests(golden: dict[str, Any]) -> None:
    before = copy.deepcopy(golden)
    decode_push(golden)
    assert golden == before
