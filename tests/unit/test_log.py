"""Structured JSON logs (lbtrain/log.py): one JSON object per line, context, trace, no secrets."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from lbtrain import log as logmod

SECRET = "tok-9f8e7d6c5b4a"
OTHER_SECRET = "whsec-0a1b2c3d"


def _lbtrain_handler() -> logging.Handler:
    (handler,) = [h for h in logging.getLogger().handlers if getattr(h, "_lbtrain", False)]
    return handler


def _teardown(saved_level: int) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_lbtrain", False):
            root.removeHandler(h)
    root.setLevel(saved_level)
    logmod._secrets[:] = []
    logmod._project = ""


@pytest.fixture()
def lines() -> Iterator:
    """Set logging up as the services do; yields a function returning the JSON lines written so far."""
    saved_level = logging.getLogger().level
    logmod.setup(secrets=[SECRET, OTHER_SECRET, ""], project="my-proj", level=logging.DEBUG)
    handler = _lbtrain_handler()
    assert handler.stream is sys.stdout  # services log to stdout (Cloud Logging reads it)
    buf = io.StringIO()
    handler.setStream(buf)

    def read() -> list[dict]:
        out = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    try:
        yield read
    finally:
        _teardown(saved_level)


def test_every_line_is_a_json_object_with_severity_and_message(lines) -> None:  # noqa: ANN001
    log = logmod.get("lbtrain.test")
    log.debug("d %s", 1)
    log.info("hello %s", "world")
    log.warning("careful")
    log.error("bad")
    log.critical("worse")
    out = lines()
    assert [e["severity"] for e in out] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    assert [e["message"] for e in out] == ["d 1", "hello world", "careful", "bad", "worse"]
    for e in out:
        assert e["logger"] == "lbtrain.test"
        assert e["time"].endswith("Z") and "T" in e["time"]


def test_multiline_message_stays_one_line(lines) -> None:  # noqa: ANN001
    logmod.get("lbtrain.test").info("first\nsecond")
    out = lines()
    assert len(out) == 1 and out[0]["message"] == "first\nsecond"


def test_bound_context_appears_and_is_removed_after(lines) -> None:  # noqa: ANN001
    log = logmod.get("lbtrain.test")
    with logmod.bind(run_id="r1", stage="train", attempt=2):
        log.info("inside")
        with logmod.bind(stage="evaluate", empty="", none=None):
            log.info("nested")
        log.info("inside again")
    log.info("outside")
    inside, nested, again, outside = lines()
    assert (inside["run_id"], inside["stage"], inside["attempt"]) == ("r1", "train", 2)
    assert (nested["run_id"], nested["stage"]) == ("r1", "evaluate")
    assert "empty" not in nested and "none" not in nested
    assert again["stage"] == "train"
    assert "run_id" not in outside and "stage" not in outside


def test_trace_is_formatted_for_cloud_logging(lines) -> None:  # noqa: ANN001
    trace = logmod.trace_from_header("105445aa7843bc8bf206b12000100000/1;o=1")
    assert trace == "105445aa7843bc8bf206b12000100000"
    with logmod.bind(trace=trace, run_id="r1"):
        logmod.get("lbtrain.test").info("traced")
    (entry,) = lines()
    assert entry[logmod.TRACE_KEY] == "projects/my-proj/traces/105445aa7843bc8bf206b12000100000"
    assert "trace" not in entry


def test_trace_from_header_without_span_or_missing() -> None:
    assert logmod.trace_from_header("abc") == "abc"
    assert logmod.trace_from_header(None) == ""
    assert logmod.trace_from_header("") == ""


def test_no_trace_key_without_a_trace(lines) -> None:  # noqa: ANN001
    with logmod.bind(trace=""):
        logmod.get("lbtrain.test").info("x")
    (entry,) = lines()
    assert logmod.TRACE_KEY not in entry


def test_event_fields_are_top_level(lines) -> None:  # noqa: ANN001
    logmod.event(logmod.get("lbtrain.test"), "job launched", job_id="j1", attempt=3)
    (entry,) = lines()
    assert entry["message"] == "job launched" and entry["job_id"] == "j1" and entry["attempt"] == 3


def test_extra_fields_via_stdlib_extra(lines) -> None:  # noqa: ANN001
    logmod.get("lbtrain.test").info("x", extra={"fields": {"run_id": "r9"}})
    assert lines()[0]["run_id"] == "r9"


def test_secrets_are_scrubbed_from_message_and_fields(lines) -> None:  # noqa: ANN001
    log = logmod.get("lbtrain.test")
    log.info("token is %s", SECRET)
    log.info("calling https://h/x?key=%s&y=1", OTHER_SECRET)
    logmod.event(log, "with fields", header=f"Bearer {SECRET}", nested={"k": [OTHER_SECRET]})
    with logmod.bind(run_id="r1", leaked=SECRET):
        log.info("bound")
    raw = json.dumps(lines())
    assert SECRET not in raw and OTHER_SECRET not in raw
    assert "[REDACTED]" in raw


def test_secrets_are_scrubbed_from_exceptions(lines) -> None:  # noqa: ANN001
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        logmod.get("lbtrain.test").exception("failed")
    (entry,) = lines()
    assert "RuntimeError" in entry["exception"]
    assert SECRET not in json.dumps(entry)


def test_secret_with_json_special_characters_is_scrubbed() -> None:
    """A webhook secret is chosen by the user in Labelbox's UI and may contain `"` or `\\`; the
    line must not carry it (once decoded from JSON) either."""
    secret = 'my"webhook\\secret'
    saved_level = logging.getLogger().level
    logmod.setup(secrets=[secret], project="p")
    buf = io.StringIO()
    _lbtrain_handler().setStream(buf)
    try:
        logmod.get("lbtrain.test").info("secret=%s", secret)
    finally:
        _teardown(saved_level)
    (entry,) = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    assert secret not in entry["message"]


def test_setup_is_idempotent(lines) -> None:  # noqa: ANN001
    logmod.setup(secrets=[SECRET], project="my-proj", level=logging.DEBUG)
    assert sum(1 for h in logging.getLogger().handlers if getattr(h, "_lbtrain", False)) == 1
    buf = io.StringIO()
    _lbtrain_handler().setStream(buf)
    logmod.get("lbtrain.test").info("once")
    assert len(buf.getvalue().splitlines()) == 1


def test_noisy_libraries_are_quieted(lines) -> None:  # noqa: ANN001
    logging.getLogger("werkzeug").info("GET / 200")
    logging.getLogger("google.api_core").info("retrying")
    logging.getLogger("werkzeug").warning("shown")
    assert [e["message"] for e in lines()] == ["shown"]
