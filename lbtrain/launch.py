"""The launcher's work for one step message: claim the step, launch its job, record the job."""

from __future__ import annotations

import logging
from typing import Any

from lbtrain import domain as d
from lbtrain import pipelines, storage
from lbtrain.adapters.backend import JobSpec
from lbtrain.deps import Deps
from lbtrain.messages import StepMessage
from lbtrain.reporting import report_status

log = logging.getLogger("lbtrain.launch")


def inputs_uri(artifact_root: str, run_id: str, stage: str, attempt: int) -> str:
    """The launcher's manifest for a job; outside the job's own outputs dir, which the job owns."""
    return storage.join(artifact_root, "runs", run_id, "inputs", f"{stage}-a{attempt}.json")


def job_inputs(run: dict[str, Any], stage: str, attempt: int) -> dict[str, Any]:
    stages = pipelines.get(run["model_type"]).stages
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
LOADS_MODEL = frozenset({"evaluate", "deploy"})

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
    if claim.kind == "noop":
        return f"no-op: {claim.reason}"
    run = claim.run
    cfg = deps.config
    name = d.job_name(cfg.deployment_name, msg.run_id, msg.stage, msg.attempt)
    job = deps.backend.find_by_name(name) if claim.kind == "reclaim" else None
    if job is None:
        in_uri = inputs_uri(cfg.artifact_root, msg.run_id, msg.stage, msg.attempt)
        inputs = (model_run_inputs(cfg.deployment_name, run, msg.attempt) if msg.stage == d.MODELRUN
                  else job_inputs(run, msg.stage, msg.attempt))
        storage.write_json(in_uri, inputs)
        spec = JobSpec(name=name, run_id=msg.run_id, stage=msg.stage, attempt=msg.attempt,
                       model_type=run["model_type"], inputs_uri=in_uri,
                       outputs_uri=storage.run_dir(cfg.artifact_root, msg.run_id, msg.stage, msg.attempt),
                       labels=job_labels(cfg.deployment_name, msg.run_id, msg.stage, msg.attempt),
                       module=JOB_MODULES.get(msg.stage, ""),
                       model_sha256=str(run.get("model_sha256") or "") if msg.stage in LOADS_MODEL else "")
        job = deps.backend.submit(spec)
    record = deps.store.record_launch(msg.run_id, msg.stage, msg.attempt, job)
    if record.cancel_job:
        deps.backend.cancel(job.id)
        return f"job {job.id} launched while the run was cancelled: cancelling it"
    if record.duplicate:
        return f"job {job.id} already recorded"
    status = pipelines.STAGE_LABELBOX_STATUS.get(msg.stage)
    if status:
        report_status(deps, run["model_run_id"], status, run_id=msg.run_id)
    return f"launched {job.id}"


def cancel_step(deps: Deps, msg: StepMessage) -> str:
    """Cancel the step's job at the backend; its completion event then ends the run CANCELLED."""
    run = deps.store.get_run(msg.run_id)
    step = deps.store.get_step(msg.run_id, msg.stage)
    job = step.get("job") or {}
    if run["status"] != "CANCELLING" or step["attempt"] != msg.attempt or not job:
        return f"no-op: nothing to cancel (run {run['status']}, step {step['state']})"
    deps.backend.cancel(job["id"])
    return f"cancel sent to {job['id']}"
