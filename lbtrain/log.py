"""Structured JSON logs for Cloud Logging: one JSON object per line with `severity`,
`message`, the trace id and whatever context (run_id, stage, attempt) is bound.

Known secret values are scrubbed from every line before it is written.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("lbtrain_log_context", default=None)
_secrets: list[str] = []
_project = ""

TRACE_KEY = "logging.googleapis.com/trace"


def _scrub(text: str) -> str:
    """Remove secrets from a JSON line, in their raw and their JSON-escaped spelling."""
    for secret in _secrets:
        for form in {secret, json.dumps(secret, ensure_ascii=False)[1:-1], json.dumps(secret)[1:-1]}:
            if form and form in text:
                text = text.replace(form, "[REDACTED]")
    return text


def scrub(text: str) -> str:
    """`text` without the secret values `setup` was given (error messages written outside the logs)."""
    return _scrub(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARNING" else "WARNING",
            "message": record.getMessage(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "logger": record.name,
        }
        ctx = dict(_context.get() or {})
        trace = ctx.pop("trace", None)
        if trace:
            entry[TRACE_KEY] = f"projects/{_project}/traces/{trace}" if _project else trace
        entry.update(ctx)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _scrub(json.dumps(entry, default=str, ensure_ascii=False))


def setup(secrets: Iterable[str] = (), project: str = "", level: int = logging.INFO) -> None:
    """Route the root logger to stdout as JSON lines (idempotent)."""
    global _project
    _secrets[:] = [s for s in secrets if s]
    _project = project
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_lbtrain", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler._lbtrain = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("werkzeug", "urllib3", "google", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Attach fields (run_id, stage, attempt, trace) to every log line in this context."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v not in (None, "")}})
    try:
        yield
    finally:
        _context.reset(token)


def trace_from_header(value: str | None) -> str:
    """`X-Cloud-Trace-Context: TRACE_ID/SPAN;o=1` → TRACE_ID."""
    return (value or "").split("/", 1)[0].strip()


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})
