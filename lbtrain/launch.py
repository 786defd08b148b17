"""The launcher's work for one step message: claim the step, launch its job, record the job."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from lbtrain import domain as d
from lbtrain import failures, pipelines, storage
from lbtrain.adapters.backend import JobSpec
from lbtrain.deps import Deps
from lbtrain.errors import Busy
from lbtrain.messages import StepMessage
from lbtrain.reporting import report_status

log = logging.getLogger("lbtrain.launch")
# A retry due within this many seconds keeps its step message (503: Pub/Sub redelivers it with its
# back-off, far below the 50 deliveries of the dead-letter policy); a later one is acknowledged and
# the reconciler publishes it again once due (docs/architecture.md §7.8).
HOLD_SECONDS = 60.0


def inputs_uri(artifact_root: str, run_id: str, stage: str, attempt: int) -> str:
    """The launcher's manifest for a job; outside the job's own outputs dir, which the job owns."""
    return storage.join(artifact_root, "runs", run_id, "inputs", f"{stage}-a{attempt}.json")


def job_inputs(run: dict[str, Any], stage: str, attempt: int) -> dict[str, Any]:
    stages = pipelines.run_stages(run)
    earlier = stages[: stages.index(stage)]
    return {
        "run_id": run["run_id"], "model_type": run["model_type"], "model_run_id": run["model_run_id"],
        "model_id": run.get("model_id", ""), "params": run.get("params") or {}, "stage": stage,
        "attempt": attempt, "upstream": {s: run["outputs"][s] for s in earlier if run.get("outputs", {}).get(s)},
    }


def model_run_inputs(deployment: str, run: dict[str, Any], attempt: int) -> dict[str, Any]:
    """What the modelrun job needs to create the rule run's model run: the same name on every attempt."""
    return {
        "run_id": run["run_id"], "model_type": run["model_type"], "model_id": run.get("model_id", ""),
        "project_id": (run.get("trigger") or {}).get("project_id", ""),
        "model_run_name": d.model_run_name(deployment, run["run_id"]), "stage": d.MODELRUN, "attempt": attempt,
    }


# Stages that load the trained model: they get its recorded digest (jobs/tasks/base.py verifies it).
LOADS_MODEL = frozenset({"evaluate", "deploy", "prelabel"})

# Jobs that run another program than the stages' (JOB_MODULE, the jobs image's entrypoint).
JOB_MODULES = {d.MODELRUN: "jobs.modelrun"}


def job_labels(deployment: str, run_id: str, stage: str, attempt: int) -> dict[str, str]:
    return {"deployment": deployment, "run_id": run_id, "stage": stage, "attempt": str(attempt)}


def handle_step(deps: Deps, msg: StepMessage) -> str:
    """Returns what happened (for the log). Raises firestore_store.Busy when another launcher
    holds the step: the message is redelivered later."""
    if msg.action == "cancel":
        return cancel_step(deps, msg)
    claim = deps.store.claim_step(msg.run_id, msg.stage, msg.attempt)
    if claim.kind == "not_yet":
        return not_yet(msg, claim.due)
    if claim.kind == "noop":
        return f"no-op: {claim.reason}"
    run = claim.run
    cfg = deps.config
    name = d.job_name(cfg.deployment_name, msg.run_id, msg.stage, msg.attempt)
    in_uri = inputs_uri(cfg.artifact_root, msg.run_id, msg.stage, msg.attempt)
    spec = JobSpec(name=name, run_id=msg.run_id, stage=msg.stage, attempt=msg.attempt,
                   model_type=run["model_type"], inputs_uri=in_uri,
                   outputs_uri=storage.run_dir(cfg.artifact_root, msg.run_id, msg.stage, msg.attempt),
                   labels=job_labels(cfg.deployment_name, msg.run_id, msg.stage, msg.attempt),
                   module=JOB_MODULES.get(msg.stage, ""), machine_index=int(claim.step.get("machine_index") or 0),
                   model_sha256=str(run.get("model_sha256") or "") if msg.stage in LOADS_MODEL else "")
    machine = machine_label(deps, spec)
    job = deps.backend.find_by_name(name) if claim.kind == "reclaim" else None
    if job is None:
        inputs = (model_run_inputs(cfg.deployment_name, run, msg.attempt) if msg.stage == d.MODELRUN
                  else job_inputs(run, msg.stage, msg.attempt))
        storage.write_json(in_uri, inputs)
        try:
            job = deps.backend.submit(spec)
        except Exception as exc:
            failure = failures.classify_exception(exc)
            if failure is None or msg.stage == d.MODELRUN:
                raise  # not an API error we know: redelivered, in the end dead-lettered (fails the run)
            return launch_failed(deps, msg, failure, machine)
    record = deps.store.record_launch(msg.run_id, msg.stage, msg.attempt, job, machine=machine)
    if record.cancel_job:
        deps.backend.cancel(job.id)
        return f"job {job.id} launched while the run was cancelled: cancelling it"
    if record.duplicate:
        return f"job {job.id} already recorded"
    status = pipelines.STAGE_LABELBOX_STATUS.get(msg.stage)
    if status:
        report_status(deps, run["model_run_id"], status, run_id=msg.run_id)
    return f"launched {job.id}"


def not_yet(msg: StepMessage, due: datetime) -> str:
    """A retry before its back-off ended (claim_step's "not_yet"): Busy (503, redelivered) when it is
    due soon, else an acknowledging no-op, the reconciler re-publishing it once due."""
    wait = (due - d.now()).total_seconds()
    if wait <= HOLD_SECONDS:  # due by now too (since the claim read it): redelivered, it launches then
        raise Busy(f"{msg.run_id}/{msg.stage} attempt {msg.attempt} is due in {max(wait, 0.0):.1f} s")
    return f"no-op: {msg.stage} attempt {msg.attempt} is due at {due.isoformat()}; the reconciler launches it"


def machine_label(deps: Deps, spec: JobSpec) -> str:
    label = getattr(deps.backend, "machine_label", None)
    return label(spec) if label is not None else deps.backend.name


def launch_failed(deps: Deps, msg: StepMessage, failure: failures.Failure, machine: str) -> str:
    """The job could not be created: this attempt failed (retried after a back-off when the cause
    is transient, quota or capacity; the run fails when not, or when no attempt is left)."""
    from lbtrain.completion import follow_up

    error = f"creating the job failed: {failure.text()}"
    log.warning("%s %s a%d: %s", msg.run_id, msg.stage, msg.attempt, error,
                extra={"fields": {"run_id": msg.run_id, "stage": msg.stage, "attempt": msg.attempt,
                                  "failure_kind": failure.kind, "failure_reason": failure.reason,
                                  "machine": machine}})
    done = deps.store.fail_launch(msg.run_id, msg.stage, msg.attempt, error=error, failure=failure.to_dict(),
                                  policy=deps.config.retry_policy(), machine=machine)
    return follow_up(deps, done, msg.stage, msg.attempt, failure)


def cancel_step(deps: Deps, msg: StepMessage) -> str:
    """Cancel the step's job at the backend; its completion event then ends the run CANCELLED."""
    run = deps.store.get_run(msg.run_id)
    step = deps.store.get_step(msg.run_id, msg.stage)
    job = step.get("job") or {}
    if run["status"] != "CANCELLING" or step["attempt"] != msg.attempt or not job:
        return f"no-op: nothing to cancel (run {run['status']}, step {step['state']})"
    deps.backend.cancel(job["id"])
    return f"cancel sent to {job['id']}"
