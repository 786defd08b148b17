"""Which job failures deserve another attempt (docs/architecture.md §7.8).

One table, `RULES`, of Vertex AI error codes and messages and local runner outcomes. A failure in
the data or the code (the job wrote error.json, exited 1 or 2, a bad argument) would fail again,
so it is never retried; a failure of the infrastructure (a machine lost or preempted, no capacity
or quota, Vertex's own INTERNAL/UNAVAILABLE) is retried after a back-off, and a capacity or quota
failure moves the next attempt to the next machine of the stage's fallback list. Pure: no I/O, and
google.api_core is imported only to read an exception's code.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

TRANSIENT = "transient"  # the same machine again, after a back-off
CAPACITY = "capacity"  # the next machine of the fallback list, after a back-off
PERMANENT = "permanent"  # the data or the code: never retried
KINDS = (TRANSIENT, CAPACITY, PERMANENT)

# google.rpc.Code numbers (Vertex puts them in a failed job's `error.code` and in API errors).
INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, PERMISSION_DENIED = 3, 4, 5, 7
RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, INTERNAL, UNAVAILABLE = 8, 9, 10, 13, 14
# HTTP status → google.rpc code, for REST errors that carry no gRPC status.
HTTP_TO_RPC = {400: INVALID_ARGUMENT, 403: PERMISSION_DENIED, 404: NOT_FOUND, 409: ABORTED,
               429: RESOURCE_EXHAUSTED, 500: INTERNAL, 503: UNAVAILABLE, 504: DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class Failure:
    kind: str  # TRANSIENT | CAPACITY | PERMANENT
    reason: str  # short, for people: "preempted", "quota", "killed by SIGKILL", …
    detail: str = ""  # the backend's own message

    @property
    def retryable(self) -> bool:
        return self.kind != PERMANENT

    def text(self) -> str:
        """`reason: detail` in one line, short enough for a run's error and a Labelbox status."""
        detail = " ".join(self.detail.split())
        if not detail or detail.lower().startswith(self.reason.lower()):
            return (detail or self.reason)[:300]
        return f"{self.reason}: {detail}"[:300]

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "reason": self.reason, "detail": self.detail[:1000]}


@dataclass(frozen=True)
class Rule:
    kind: str
    reason: str
    pattern: str = ""  # searched, case-insensitive, in the backend's message
    codes: tuple[int, ...] = ()  # google.rpc codes


# First match wins: messages before codes, since Vertex reports many causes under one code
# (an exit status of 1 and a bad argument are both code 3; quota and capacity both code 8).
RULES: tuple[Rule, ...] = (
    # The job ran and failed: its code or its data. A retry would fail the same way.
    Rule(PERMANENT, "out of memory", r"OOMKilled|out of memory"),
    Rule(PERMANENT, "the job failed", r"exited with a non-zero status of [12]\b|job exited with code [12]\b"),
    Rule(PERMANENT, "job succeeded without outputs", r"wrote no outputs\.json|outputs\.json is missing"),
    # No machine for it now: another machine of the list, or the same later.
    Rule(CAPACITY, "quota", r"quota metrics exceed quota limits|quota exceeded|exceeds? (the )?quota"),
    Rule(CAPACITY, "no capacity", r"resources are insufficient in region|does not have enough resources available"
                                  r"|ZONE_RESOURCE_POOL_EXHAUSTED|resource_availability|stockout"
                                  r"|instance is currently unavailable"),
    Rule(CAPACITY, "not scheduled in time", r"max(imum)? wait duration|not (be )?scheduled within"
                                            r"|scheduling timeout"),
    # The machine went away under the job.
    Rule(TRANSIENT, "preempted", r"preempt"),
    Rule(TRANSIENT, "machine lost", r"killed by signal|runner exited without recording a result"
                                    r"|stopped unexpectedly|host (maintenance|error)|machine (was )?lost"),
    Rule(TRANSIENT, "Vertex internal error", r"internal error occurred", (INTERNAL,)),
    Rule(TRANSIENT, "Vertex unavailable", r"service unavailable", (UNAVAILABLE,)),
    Rule(TRANSIENT, "deadline exceeded", codes=(DEADLINE_EXCEEDED,)),
    Rule(TRANSIENT, "aborted", codes=(ABORTED,)),
    Rule(CAPACITY, "resource exhausted", codes=(RESOURCE_EXHAUSTED,)),
    Rule(PERMANENT, "invalid argument", codes=(INVALID_ARGUMENT, FAILED_PRECONDITION, PERMISSION_DENIED, NOT_FOUND)),
)
_COMPILED = tuple((rule, re.compile(rule.pattern, re.IGNORECASE) if rule.pattern else None) for rule in RULES)


def classify(message: str, *, code: int = 0, exit_code: int | None = None, job_said: bool = False) -> Failure:
    """Classify a failed job: its backend `message`, Vertex's google.rpc `code`, a local job's
    `exit_code` (negative: the signal that killed it) and whether the job wrote error.json."""
    message = message or ""
    if job_said:
        return Failure(PERMANENT, "the job reported an error", message)
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return Failure(TRANSIENT, f"killed by {name}", message)
    if exit_code in (1, 2):
        return Failure(PERMANENT, "the job failed", message)
    for rule, pattern in _COMPILED:
        if (pattern is not None and pattern.search(message)) or (code and code in rule.codes):
            return Failure(rule.kind, rule.reason, message)
    # Unknown: a retry only helps when we know why it failed.
    return Failure(PERMANENT, "failed", message)


def classify_exception(exc: BaseException) -> Failure | None:
    """A job-creation error (the launcher's `backend.submit`); None when it is no API error we know
    (a bug or a configuration error: left to the push handler's redelivery and the dead letter)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return Failure(TRANSIENT, "backend unreachable", str(exc))
    try:
        from google.api_core import exceptions as gexc
    except ImportError:  # pragma: no cover - google-api-core is a dependency
        return None
    if not isinstance(exc, gexc.GoogleAPICallError):
        return None
    code = 0
    grpc_code = getattr(exc, "grpc_status_code", None)
    if grpc_code is not None:
        code = int(grpc_code.value[0])
    elif exc.code is not None:
        code = HTTP_TO_RPC.get(int(exc.code), 0)
    # REST errors read "POST https://…/customJobs?…: <Vertex's message>": keep Vertex's words.
    message = re.sub(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ", "", str(exc.message or exc))
    failure = classify(message, code=code)
    if failure.reason == "failed" and code in (0,) and int(exc.code or 0) >= 500:
        return Failure(TRANSIENT, "backend error", message)
    return failure
