"""Labelbox webhook signatures (lbtrain/signature.py): HMAC of the raw body, sha1 or sha256."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from lbtrain import signature

DATA = Path(__file__).resolve().parent.parent / "data"
SECRET = "s3cr3t-for-tests"
BODY = b'{"modelId":"m1","modelRunId":"mr1","modelType":"text_single_classification"}'


def _hmac(secret: str, body: bytes, algo: str) -> str:
    return f"{algo}=" + hmac.new(secret.encode(), body, getattr(hashlib, algo)).hexdigest()


@pytest.fixture(scope="module")
def delivery() -> dict:
    return json.loads((DATA / "labelbox_model_run_delivery.json").read_text(encoding="utf-8"))


def test_sign_matches_an_independent_hmac() -> None:
    assert signature.sign(SECRET, BODY) == _hmac(SECRET, BODY, "sha1")
    assert signature.sign(SECRET, BODY, "sha256") == _hmac(SECRET, BODY, "sha256")
    assert signature.headers(SECRET, BODY) == {
        "X-Hub-Signature": _hmac(SECRET, BODY, "sha1"),
        "X-Hub-Signature-256": _hmac(SECRET, BODY, "sha256"),
    }


def test_sha1_only_is_accepted() -> None:
    assert signature.verify(SECRET, BODY, {"X-Hub-Signature": _hmac(SECRET, BODY, "sha1")}) is None


def test_sha256_only_is_accepted() -> None:
    assert signature.verify(SECRET, BODY, {"X-Hub-Signature-256": _hmac(SECRET, BODY, "sha256")}) is None


def test_both_headers_valid_is_accepted() -> None:
    assert signature.verify(SECRET, BODY, signature.headers(SECRET, BODY)) is None


def test_sha256_is_preferred_when_both_are_present() -> None:
    # A forged sha256 next to a valid sha1 must not pass: sha256 decides.
    headers = {"X-Hub-Signature": _hmac(SECRET, BODY, "sha1"), "X-Hub-Signature-256": _hmac("other", BODY, "sha256")}
    problem = signature.verify(SECRET, BODY, headers)
    assert problem is not None and "X-Hub-Signature-256" in problem
    # ...and a valid sha256 decides even when the sha1 next to it is wrong.
    headers = {"X-Hub-Signature": _hmac("other", BODY, "sha1"), "X-Hub-Signature-256": _hmac(SECRET, BODY, "sha256")}
    assert signature.verify(SECRET, BODY, headers) is None


@pytest.mark.parametrize("name", ["x-hub-signature", "X-HUB-SIGNATURE", "x-Hub-Signature"])
def test_sha1_header_name_is_case_insensitive(name: str) -> None:
    assert signature.verify(SECRET, BODY, {name: _hmac(SECRET, BODY, "sha1")}) is None


@pytest.mark.parametrize("name", ["x-hub-signature-256", "X-HUB-SIGNATURE-256"])
def test_sha256_header_name_is_case_insensitive(name: str) -> None:
    assert signature.verify(SECRET, BODY, {name: _hmac(SECRET, BODY, "sha256")}) is None


def test_werkzeug_headers_work() -> None:
    from werkzeug.datastructures import Headers

    h = Headers()
    h.add("x-hub-signature-256", _hmac(SECRET, BODY, "sha256"))
    assert signature.verify(SECRET, BODY, h) is None


def test_wrong_secret_gives_a_reason() -> None:
    problem = signature.verify(SECRET, BODY, {"X-Hub-Signature": _hmac("wrong", BODY, "sha1")})
    assert isinstance(problem, str) and "X-Hub-Signature" in problem


def test_missing_header_gives_a_reason_naming_the_headers() -> None:
    problem = signature.verify(SECRET, BODY, {"Content-Type": "application/json"})
    assert isinstance(problem, str)
    assert "X-Hub-Signature" in problem and "X-Hub-Signature-256" in problem


@pytest.mark.parametrize("value", [
    "",
    "sha1",
    "sha1=",
    "sha1=zz",
    "md5=" + hashlib.md5(BODY).hexdigest(),
    hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest(),  # digest without the "sha1=" prefix
    _hmac(SECRET, BODY, "sha256"),  # sha256 value in the sha1 header
    "sha1=" + "é" * 40,
])
def test_malformed_sha1_header_is_refused_with_a_reason(value: str) -> None:
    problem = signature.verify(SECRET, BODY, {"X-Hub-Signature": value})
    assert isinstance(problem, str) and problem


@pytest.mark.parametrize("value", ["", "sha256=", _hmac(SECRET, BODY, "sha1"), "sha256=" + "0" * 64])
def test_malformed_sha256_header_is_refused_with_a_reason(value: str) -> None:
    problem = signature.verify(SECRET, BODY, {"X-Hub-Signature-256": value})
    assert isinstance(problem, str) and problem


def test_verification_is_over_the_raw_bytes(delivery: dict) -> None:
    raw = delivery["body"].encode()
    secret = delivery["test_secret"]
    assert signature.verify(secret, raw, delivery["headers"]) is None
    # The same JSON document, re-serialized: different bytes, so the signature must not match.
    reserialized = json.dumps(json.loads(raw)).encode()
    assert reserialized != raw and json.loads(reserialized) == json.loads(raw)
    assert signature.verify(secret, reserialized, delivery["headers"]) is not None
    # One byte more (a trailing newline) is a different body too.
    assert signature.verify(secret, raw + b"\n", delivery["headers"]) is not None


def test_golden_delivery_signatures_match_the_documented_secret(delivery: dict) -> None:
    raw = delivery["body"].encode()
    assert delivery["headers"]["X-Hub-Signature"] == _hmac(delivery["test_secret"], raw, "sha1")
    assert delivery["headers"]["X-Hub-Signature-256"] == _hmac(delivery["test_secret"], raw, "sha256")


def test_empty_body_signature_as_for_get_models() -> None:
    assert signature.verify(SECRET, b"", {"X-Hub-Signature": _hmac(SECRET, b"", "sha1")}) is None
    assert signature.verify(SECRET, b"", {"X-Hub-Signature": _hmac(SECRET, b"x", "sha1")}) is not None


def test_empty_secret_is_refused_even_with_a_matching_signature() -> None:
    # An HMAC keyed with "" is computable by anyone: no secret configured means nothing verifies.
    problem = signature.verify("", BODY, signature.headers("", BODY))
    assert isinstance(problem, str) and "LABELBOX_WEBHOOK_SECRET" in problem


def test_verify_uses_constant_time_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hmac.compare_digest

    def spy(a, b):  # noqa: ANN001, ANN202
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signature.hmac, "compare_digest", spy)
    assert signature.verify(SECRET, BODY, {"X-Hub-Signature": _hmac(SECRET, BODY, "sha1")}) is None
    assert calls
