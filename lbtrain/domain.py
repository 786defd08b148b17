"""Runs, steps and their state machine (docs/architecture.md §6–§7): pure values and rules, no I/O."""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# Run statuses
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED = (
    "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED",
)
RUN_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
ACTIVE_RUN_STATUSES = (QUEUED, RUNNING, CANCELLING)
TERMINAL_RUN_STATUSES = (SUCCEEDED, FAILED, CANCELLED)

# Step states
PENDING, LAUNCHING, SKIPPED = "PENDING", "LAUNCHING", "SKIPPED"
STEP_STATES = (PENDING, LAUNCHING, RUNNING, SUCCEEDED, FAILED, CANCELLED, SKIPPED)

# The first step of a retraining rule's run, added when the run is released: a job creates the run's
# Labelbox model run (labels, export, splits: minutes for a big project), never a request handler.
MODELRUN = "modelrun"

# Job states reported by a backend that end a step, and what the step becomes.
JOB_STATE_TO_STEP = {
    "SUCCEEDED": SUCCEEDED,
    "FAILED": FAILED,
    "EXPIRED": FAILED,
    "PARTIALLY_SUCCEEDED": FAILED,
    "CANCELLED": CANCELLED,
}


def now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    """16 lowercase hex chars: short enough for job names and Vertex labels."""
    return uuid.uuid4().hex[:16]


_LABEL_BAD = re.compile(r"[^a-z0-9_-]+")


def job_name(deployment: str, run_id: str, stage: str, attempt: int) -> str:
    """Deterministic job name `{dep}-{run_id}-{stage}-a{attempt}`, lowercase, ≤ 63 chars (docs/architecture.md §7)."""
    name = _LABEL_BAD.sub("-", f"{deployment}-{run_id}-{stage}-a{attempt}".lower())
    if len(name) > 63:
        # Keep the distinguishing tail (run id, stage, attempt); trim the deployment prefix.
        tail = _LABEL_BAD.sub("-", f"-{run_id}-{stage}-a{attempt}".lower())
        name = name[: 63 - len(tail)].rstrip("-") + tail
    return name


@dataclass(frozen=True)
class JobRef:
    backend: str
    id: str
    name: str
    url: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRef:
        return cls(backend=data["backend"], id=data["id"], name=data["name"], url=data.get("url", ""))


@dataclass(frozen=True)
class JobStatus:
    state: str  # PENDING|RUNNING|SUCCEEDED|FAILED|CANCELLED|EXPIRED|PARTIALLY_SUCCEEDED (Vertex vocabulary)
    error: str = ""
    code: int = 0  # Vertex: the failed job's google.rpc code (lbtrain/failures.py classifies it)
    exit_code: int | None = None  # local: the failed job's return code (negative: killed by that signal)

    @property
    def terminal(self) -> bool:
        return self.state in JOB_STATE_TO_STEP


def initial_run(run_id: str, model_type: str, model_run_id: str, model_id: str, params: dict[str, Any],
                trigger: dict[str, Any], first_stage: str, at: datetime,
                stages: tuple[str, ...] = ()) -> dict[str, Any]:
    """`stages`: the run's own pipeline (its model type's, with the prelabel step when it has one)."""
    return {
        "run_id": run_id,
        "model_type": model_type,
        "model_run_id": model_run_id,
        "model_id": model_id,
        "params": params,
        "status": QUEUED,
        "stage": first_stage,
        "trigger": trigger,
        "created_at": at,
        "updated_at": at,
        "finished_at": None,
        "error": None,
        "outputs": {},
        "metrics": {},
        **({"stages": list(stages)} if stages else {}),
    }


# A run's `admission` (lbtrain/admission.py; absent when no limit was configured as it started): QUEUED
# waits for a slot (nothing may launch it), ADMITTED holds one until the run ends.
ADMISSION_QUEUED, ADMISSION_ADMITTED = "queued", "admitted"


def is_held(run: dict[str, Any]) -> bool:
    """A retraining rule's run that waits to be released (no Labelbox model run, not released): nothing
    may launch it."""
    return not run.get("model_run_id") and not run.get("released_at")


def launch_blocker(run: dict[str, Any], stage: str) -> str:
    """Why `stage` of this run may not be launched now; "" when it may. A released rule run without its
    model run yet may only launch the modelrun step."""
    if is_held(run):
        return f"run is waiting: {run.get('waiting') or 'no model run yet'}"
    if run.get("admission") == ADMISSION_QUEUED:
        return f"run is waiting: {run.get('waiting') or 'for an admission slot'}"
    if not run.get("model_run_id") and stage != MODELRUN:
        return "run has no Labelbox model run yet"
    return ""


def model_run_name(deployment: str, run_id: str) -> str:
    """The name of a rule run's Labelbox model run: every attempt finds the same one (create is by name)."""
    return f"{deployment}-{run_id}"


def initial_step(stage: str, index: int, at: datetime) -> dict[str, Any]:
    return {
        "stage": stage,
        "index": index,
        "state": PENDING,
        "attempt": 1,
        "job": None,
        "launched_at": None,
        "started_at": None,
        "ended_at": None,
        "updated_at": at,
        "lease_until": None,
        "outputs_uri": None,
        "metrics": {},
        "error": None,
        "attempts": [],
    }


def retry_stage(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The step a retry restarts from: the first (in pipeline order) that did not succeed."""
    for step in sorted(steps, key=lambda s: s["index"]):
        if step["state"] not in (SUCCEEDED, SKIPPED):
            return step
    return None


def history_entry(step: dict[str, Any]) -> dict[str, Any]:
    """What an attempt leaves behind when a retry replaces it."""
    return {k: step.get(k) for k in ("attempt", "state", "job", "machine", "launched_at", "started_at", "ended_at",
                                     "error", "failure", "retry_at")}


@dataclass(frozen=True)
class RetryPolicy:
    """Automatic retries of infrastructure failures (docs/architecture.md §7.8): at most `max_attempts`
    per stage since its last manual retry, the n-th retry after min(cap, base·2^(n-1)) seconds with
    jitter (a random 50–100 % of it), so that jobs failed by one outage do not all return together."""

    max_attempts: int = 3
    base_seconds: float = 30.0
    cap_seconds: float = 600.0

    def delay(self, retry: int, rand: float | None = None) -> float:
        rand = random.random() if rand is None else rand
        return min(self.cap_seconds, self.base_seconds * 2 ** max(retry - 1, 0)) * (0.5 + rand / 2)


@dataclass(frozen=True)
class FailedAttempt:
    """How one failed attempt ends: the step moves to `step_update`; `retry_at` is set when another
    attempt follows, else the run fails with `message`."""

    step_update: dict[str, Any]
    retry_at: datetime | None
    message: str


def attempts_in_series(step: dict[str, Any]) -> int:
    """Attempts of this stage since its last manual retry (`retry_from`), this one included."""
    return int(step["attempt"]) - int(step.get("retry_from") or 1) + 1


def failed_attempt(step: dict[str, Any], error: str, failure: dict[str, Any] | None, policy: RetryPolicy,
                   at: datetime, rand: float | None = None) -> FailedAttempt:
    """The rule for a failed job or job creation: retry a retryable failure while the stage has
    attempts left (a capacity failure on the next machine of the list), else fail naming every
    attempt's reason. `failure` is `failures.Failure.to_dict()`; None means not retryable."""
    ended = {**step, "state": FAILED, "ended_at": at, "error": error or None, "failure": failure}
    retry = bool(failure) and failure["kind"] != "permanent" and attempts_in_series(step) < policy.max_attempts
    if not retry:
        series = [h for h in step.get("attempts") or []
                  if int(h.get("attempt") or 0) >= int(step.get("retry_from") or 1)]
        message = attempts_message([*series, ended]) if series else (error or "job failed")
        return FailedAttempt({"state": FAILED, "ended_at": at, "error": error or None, "failure": failure,
                              "lease_until": None, "not_before": None}, None, message)
    retry_at = at + timedelta(seconds=policy.delay(attempts_in_series(step), rand))
    machine_index = int(step.get("machine_index") or 0) + (failure["kind"] == "capacity")
    return FailedAttempt({
        "state": PENDING, "attempt": int(step["attempt"]) + 1, "job": None, "machine": None,
        "machine_index": machine_index, "launched_at": None, "started_at": None, "ended_at": None,
        "lease_until": None, "error": None, "failure": None, "outputs_uri": None, "metrics": {},
        "not_before": retry_at,
        "attempts": [*(step.get("attempts") or []), history_entry({**ended, "retry_at": retry_at})],
    }, retry_at, "")


def attempts_message(attempts: list[dict[str, Any]]) -> str:
    """`3 attempts failed: a1 (machine) reason; a2 …`: what a run that ran out of retries says."""
    parts = []
    for h in attempts:
        failure = h.get("failure") or {}
        reason = failure.get("reason") or "failed"
        detail = " ".join(str(h.get("error") or failure.get("detail") or "").split())
        text = detail if detail.lower().startswith(reason.lower()) else f"{reason}: {detail}" if detail else reason
        machine = f" on {h['machine']}" if h.get("machine") else ""
        parts.append(f"attempt {h.get('attempt')}{machine}: {text[:160]}")
    return f"{len(attempts)} attempts failed: " + "; ".join(parts)


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics only: what list views and logs show."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
