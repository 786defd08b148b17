"""The one parser of untrusted JSON (lbtrain/messages.py: parse_json) and the storability check of
params: what each refuses, and that they refuse it without recursion and in linear time."""

from __future__ import annotations

import json
import time

import pytest

from lbtrain.messages import (
    MAX_JSON_DEPTH,
    BadMessage,
    check_storable,
    decode_push,
    encode_push,
    json_depth_exceeds,
    parse_json,
)
from lbtrain.triggers import parse_label_event


@pytest.mark.parametrize("raw", [b"[" * 50_000, b'{"a":' * 50_000, b"[" * (MAX_JSON_DEPTH + 1) + b"]" * 65])
def test_too_deep_is_refused_naming_the_limit(raw: bytes) -> None:
    with pytest.raises(BadMessage, match=f"nested deeper than the limit of {MAX_JSON_DEPTH} levels"):
        parse_json(raw)


def test_the_limit_itself_parses() -> None:
    raw = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(raw) is not None


@pytest.mark.parametrize("raw", [b'"[[[["', b'{"a": "\\\\[\\"[[[[["}', b'["]]]]]", "[[[["]'])
def test_brackets_inside_strings_do_not_count(raw: bytes) -> None:
    assert not json_depth_exceeds(raw, 1)
    parse_json(raw, max_depth=2)


@pytest.mark.parametrize(("raw", "why"), [
    (b"\xff\xfe", "not valid UTF-8"), (b'{"a": "\xc3"}', "not valid UTF-8"), (b"NaN", "NaN"),
    (b"[Infinity]", "Infinity"), (b"[1e400]", "out of range"), (b"9" * 5000, "digits"),
    (b'"\\ud800"', "lone UTF-16 surrogate"), (b'{"\\udfff": 1}', "lone UTF-16 surrogate"), (b"", "malformed"),
    (b"{not json", "malformed JSON"),
])
def test_malformed_is_refused(raw: bytes, why: str) -> None:
    with pytest.raises(BadMessage, match=why):
        parse_json(raw)


def test_a_surrogate_pair_is_text() -> None:
    assert parse_json(b'"\\ud83d\\ude00"') == "\U0001F600"


def test_scan_is_linear_on_a_megabyte_of_tokens() -> None:
    raw = json.dumps(["\\\"[{" * 40_000, [[]] * 100_000]).encode()
    start = time.perf_counter()
    parse_json(raw)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("params", [
    json.loads('{"a":' * 17 + "1" + "}" * 17), {"x": 2 ** 63}, {"x": -(2 ** 63) - 1}, {"__name__": 1}, {"": 1},
    {"k" * 257: 1}, {"a": {"__x__": [1]}}, {"a": ["x" * 70_000]}, {"a": float("nan")}, {"a": float("inf")},
    {"a": "\ud800"}, {"a": object()},
])
def test_unstorable_params_are_refused(params: object) -> None:
    with pytest.raises(BadMessage):
        check_storable(params)


def test_storable_params_pass() -> None:
    check_storable({"epochs": 3, "lr": 0.001, "layers": [64, 32], "nested": {"a": {"b": [1, 2, {"c": None}]}},
                    "x": 2 ** 63 - 1, "é": "ünïcode"})


@pytest.mark.parametrize("message_id", ["x" * 257, {"a": 1}, [1], True])
def test_a_push_message_id_that_would_be_stored_is_bounded(message_id: object) -> None:
    envelope = encode_push({"model_type": "t"})
    envelope["message"]["messageId"] = message_id
    with pytest.raises(BadMessage, match="message id"):
        decode_push(envelope)


def test_label_ids_that_would_be_stored_are_bounded() -> None:
    body = {"id": "l" * 257, "project": {"id": "p1"}, "dataRow": {"id": "dr1"}}
    with pytest.raises(BadMessage, match="longer than"):
        parse_label_event("LABEL_CREATED", body)
    with pytest.raises(BadMessage, match="longer than"):
        parse_label_event("WORKFLOW_ACTION", {**body, "id": "l1", "dataRow": {"id": "d" * 257}})
