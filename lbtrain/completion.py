"""The job-events handler's work: a job ended → record its result → next stage or end the run."""

from __future__ import annotations

import logging
import re
from typing import Any

from lbtrain import domain as d
from lbtrain import failures, pipelines, storage
from lbtrain.deps import Deps
from lbtrain.errors import Busy
from lbtrain.intake import is_valid_id, publish_step
from lbtrain.messages import LOG_SINK_STATE, JobEvent
from lbtrain.reporting import report_status

log = logging.getLogger("lbtrain.completion")
SHA256 = re.compile(r"[0-9a-f]{64}")


def read_outputs(outputs_uri: str) -> dict[str, Any] | None:
    try:
        data = storage.read_json(storage.join(outputs_uri, "outputs.json"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_error(outputs_uri: str) -> str:
    """The job's own one-line reason (error.json), if it wrote one."""
    try:
        data = storage.read_json(storage.join(outputs_uri, "error.json"))
    except (OSError, ValueError):
        return ""
    return str(data.get("message") or "") if isinstance(data, dict) else ""


def handle_job_event(deps: Deps, event: JobEvent) -> str:
    # The event names its step (the local runner's, the jobs' own); a log-sink entry names only the job,
    # whose labels at the backend say which step it runs. complete_step checks the step holds this job.
    if event.run_id and event.stage and event.attempt:
        index: dict[str, Any] | None = {"run_id": event.run_id, "stage": event.stage, "attempt": event.attempt}
    else:
        lookup = getattr(deps.backend, "job_step", None)
        index = lookup(event.job_id) if lookup is not None else None
    if index is None:
        return f"no-op: unknown job {event.job_id}"
    run_id, stage, attempt = index["run_id"], index["stage"], int(index["attempt"])
    status = deps.backend.get_status(event.job_id)  # the event is a hint; the backend is the truth
    if not status.terminal:
        if event.state == LOG_SINK_STATE:
            # Vertex logs many lines per job; only the last one finds it ended. Ack the others.
            return f"no-op: job {event.job_id} is {status.state}"
        raise Busy(f"job {event.job_id} is {status.state} at the backend")
    outputs_uri = storage.run_dir(deps.config.artifact_root, run_id, stage, attempt)
    state, error, metrics, model_run_id, model_sha256 = status.state, status.error, {}, "", ""
    failure: failures.Failure | None = None
    if state in ("FAILED", "PARTIALLY_SUCCEEDED", "EXPIRED"):
        # Vertex only knows "exited with a non-zero status"; the job said why in error.json.
        reason = read_error(outputs_uri)
        failure = failures.classify(status.error, code=status.code, exit_code=status.exit_code,
                                    job_said=bool(reason))
        if reason and reason not in error:
            error = f"{reason} ({error})" if error else reason
    if state == "SUCCEEDED":
        outputs = read_outputs(outputs_uri)
        if outputs is None:
            state, error = "FAILED", f"job succeeded but {outputs_uri}/outputs.json is missing or unreadable"
            failure = failures.classify(error)
        else:
            metrics = outputs.get("metrics") or {}
            model_sha256 = str(outputs.get("model_sha256") or "") if stage == "train" else ""
            if model_sha256 and not SHA256.fullmatch(model_sha256):
                state = "FAILED"
                error = f"train job succeeded but its model digest is not a SHA-256 ({model_sha256[:80]!r})"
                model_sha256 = ""
            if stage == d.MODELRUN:
                model_run_id = str(outputs.get("model_run_id") or "")
                if not is_valid_id(model_run_id):
                    state, error = "FAILED", f"modelrun job succeeded but names no valid model run ({model_run_id!r})"
                    model_run_id = ""
    run = deps.store.get_run(run_id)
    stages = pipelines.run_stages(run)
    if stage == d.MODELRUN:  # a rule run's first step, ahead of its pipeline
        stages = (d.MODELRUN, *stages)
    done = deps.store.complete_step(run_id, stage, attempt, event.job_id, state, outputs_uri=outputs_uri,
                                    metrics=metrics, error=error, stages=stages, model_run_id=model_run_id,
                                    model_sha256=model_sha256, failure=failure.to_dict() if failure else None,
                                    policy=deps.config.retry_policy())
    if done.moved and done.retry_at is not None and failure is not None:
        announce_retry(deps, done, stage, attempt, failure)
    if done.moved and stage == d.MODELRUN and done.next_stage:
        from lbtrain import triggers

        triggers.model_run_created(deps, done.run)  # Labelbox hears EXPORTING_DATA before etl is offered
    if done.waiting:
        log.warning("run %s: %s", run_id, done.waiting, extra={"fields": {"run_id": run_id}})
    if done.next_stage:
        publish_step(deps, run_id, done.next_stage, done.next_attempt)
    if done.finished:
        finish_report(deps, done.run, done.finished)
    what = ("retry" if done.retry_at is not None else "moved") if done.moved else f"no-op ({done.reason})"
    return f"{stage} a{attempt} {state}: {what}" + (f"; next {done.next_stage}" if done.next_stage else "") + (
        f"; run {done.finished}" if done.finished else "") + ("; run waits for a relaunch" if done.waiting else "")


def announce_retry(deps: Deps, done: Any, stage: str, attempt: int, failure: failures.Failure) -> str:
    """Make an automatic retry visible: one JSON log line and the Labelbox status message (the run
    document's attempt history was written with it). Returns the sentence."""
    run = done.run
    wait = max(0.0, (done.retry_at - d.now()).total_seconds())
    on = f" on {done.machine}" if done.machine else ""
    text = (f"{stage} attempt {attempt}{on} failed ({failure.text()}); retrying as attempt "
            f"{done.next_attempt} in {wait:.0f} s")
    log.warning(text, extra={"fields": {
        "run_id": run.get("run_id"), "stage": stage, "attempt": attempt, "next_attempt": done.next_attempt,
        "failure_kind": failure.kind, "failure_reason": failure.reason, "machine": done.machine or "",
        "retry_at": done.retry_at.isoformat(), "event": "retry"}})
    if run.get("model_run_id"):
        status = pipelines.STAGE_LABELBOX_STATUS.get(stage, "TRAINING_MODEL")
        report_status(deps, run["model_run_id"], status, run_id=run["run_id"], error=text,
                      metadata={"retry": f"{stage} attempt {done.next_attempt}"})
    return text


def follow_up(deps: Deps, done: Any, stage: str, attempt: int, failure: failures.Failure) -> str:
    """What a failed job creation leads to (the launcher's side of `handle_job_event`): announce and
    offer the retry, or report the failed run."""
    if done.moved and done.retry_at is not None:
        text = announce_retry(deps, done, stage, attempt, failure)
        publish_step(deps, done.run["run_id"], done.next_stage, done.next_attempt)
        return text
    if done.finished:
        finish_report(deps, done.run, done.finished)
        return f"{stage} a{attempt} failed: run {done.finished}"
    return f"no-op ({done.reason})"


def finish_report(deps: Deps, run: dict[str, Any], status: str) -> None:
    """Tell Labelbox how the run ended, let a retraining rule start its follow-up run and give the run's
    admission slot to the next queued run. Every way a run ends comes here (job events, dead letters,
    cancel), and again on redelivery: each part is idempotent."""
    try:
        _report_end(deps, run, status)
    finally:
        from lbtrain import admission, triggers

        try:
            triggers.on_run_finished(deps, run)
        finally:
            admission.finished(deps, run)  # its slot goes to the next queued run


def _report_end(deps: Deps, run: dict[str, Any], status: str) -> None:
    if not run.get("model_run_id"):  # a held rule run cancelled before it had a model run
        return
    if status == d.SUCCEEDED:
        metrics = run.get("metrics") or {}
        keys = dict.fromkeys([pipelines.get(run["model_type"]).headline_metric, "accuracy"])
        meta = {k: f"{metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), int | float)}
        report_status(deps, run["model_run_id"], "COMPLETE", run_id=run["run_id"], metadata=meta)
    elif status == d.FAILED:
        err = run.get("error") or {}
        report_status(deps, run["model_run_id"], "FAILED", run_id=run["run_id"],
                      error=f"{err.get('stage', '?')}: {err.get('message', 'failed')} (lbtrain run {run['run_id']})")
    elif status == d.CANCELLED:
        report_status(deps, run["model_run_id"], "FAILED", run_id=run["run_id"],
                      error=f"cancelled (lbtrain run {run['run_id']})")
