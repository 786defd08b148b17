"""CloudRunBackend: stages run as executions of Cloud Run jobs (google-cloud-run run_v2, REST, imported on use).

Why: a CPU stage of a few minutes on Vertex pays for provisioning a VM (minutes, billed) before the job
starts; a Cloud Run job starts a container in seconds and bills per vCPU-second and GiB-second used.

- One Cloud Run job per deployment, stage and size (`{dep}-{stage}-{cpu}c{mem}g`), built from the jobs
  image, created or updated idempotently (a digest of its template rides in an annotation, so an unchanged
  job is never rewritten).
- One execution per attempt: RunJob with overrides carrying the same arguments as a Vertex CustomJob
  (JobSpec.args()) plus `LBTRAIN_JOB_NAME` (the deterministic job name) and the step's labels as env:
  Cloud Run executions inherit the job's labels and take none per run.
- A relaunch finds the execution through that env before running another (find_by_name).
- Job ids say which backend owns them: `crj.{cloud run job}.{execution}` (messages.cloud_run_job_id).
- The completion event is a Cloud Logging sink entry (`resource.type="cloud_run_job"`); the state is
  always re-read here from the execution's conditions and counts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from lbtrain.adapters import cloudrun_client as crc
from lbtrain.adapters.backend import JobSpec
from lbtrain.adapters.vertex_backend import JOB_ENV_KEYS, Machine, label_value, machine_for
from lbtrain.config import Config
from lbtrain.domain import JobRef, JobStatus
from lbtrain.messages import CLOUD_RUN_JOB_ID_PREFIX, cloud_run_job_id, parse_cloud_run_job_id

# Cloud Run job limits: 1, 2, 4 or 8 vCPUs, at most 32 GiB, at least 0.5/2/4 GiB per 2/4/8 vCPUs (the
# service's own rules), and a task timeout of at most 24 h here (longer runs belong on Vertex).
CPUS = (1, 2, 4, 8)
MAX_MEMORY_GIB = 32
MIN_MEMORY_GIB = {1: 1, 2: 1, 4: 2, 8: 4}
MAX_HOURS = 24.0
GIB_PER_VCPU = {"standard": 4, "highmem": 8, "highcpu": 1}
JOB_NAME_ENV = "LBTRAIN_JOB_NAME"
SPEC_ANNOTATION = "lbtrain.dev/template-sha256"


@dataclass(frozen=True)
class Size:
    """A Cloud Run task's resources, derived from the stage's JOB_MACHINES entry (the one knob for both)."""

    cpu: int
    memory_gib: int
    timeout_s: int

    @property
    def suffix(self) -> str:
        return f"{self.cpu}c{self.memory_gib}g"


def size_for(machine: Machine) -> Size:
    """`n1-standard-4` → 4 vCPU, 16 GiB; clamped to what Cloud Run jobs offer. GPUs are refused: a stage
    that needs one is routed to Vertex (STAGE_BACKENDS)."""
    if machine.gpu:
        raise ValueError(f"Cloud Run jobs take no {machine.accelerator_type}: route this stage to vertex "
                         "in STAGE_BACKENDS")
    match = re.search(r"-(standard|highmem|highcpu)-(\d+)$", machine.machine_type)
    family, vcpus = (match.group(1), int(match.group(2))) if match else ("standard", 2)
    cpu = next((c for c in CPUS if c >= vcpus), CPUS[-1])
    memory = min(MAX_MEMORY_GIB, max(MIN_MEMORY_GIB[cpu], GIB_PER_VCPU[family] * cpu))
    return Size(cpu=cpu, memory_gib=memory, timeout_s=int(min(machine.max_hours, MAX_HOURS) * 3600))


def cloud_run_name(value: str) -> str:
    """Cloud Run resource ids: lowercase letters, digits and '-', starting with a letter, ≤ 63 chars
    (49 for a job, whose executions append a 14-character suffix)."""
    out = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")
    out = out if out[:1].isalpha() else f"j-{out}"
    return out[:49].rstrip("-")


def status_of(execution: Any) -> JobStatus:
    """An Execution → the backend protocol's states (SUCCEEDED, FAILED, CANCELLED, RUNNING, PENDING)."""
    from google.cloud import run_v2

    completed = next((c for c in execution.conditions if c.type_ == "Completed"), None)
    reason = run_v2.Condition.ExecutionReason
    cancel_reason = completed is not None and completed.execution_reason in (reason.CANCELLED, reason.CANCELLING)
    finished = bool(execution.completion_time) or (
        completed is not None and completed.state in (run_v2.Condition.State.CONDITION_SUCCEEDED,
                                                      run_v2.Condition.State.CONDITION_FAILED))
    if not finished:
        return JobStatus("RUNNING" if execution.running_count or execution.start_time else "PENDING")
    if execution.cancelled_count or cancel_reason:
        return JobStatus("CANCELLED")
    task_count = execution.task_count or 1
    if execution.succeeded_count >= task_count and (completed is None or completed.state ==
                                                   run_v2.Condition.State.CONDITION_SUCCEEDED):
        return JobStatus("SUCCEEDED")
    message = (completed.message if completed is not None else "") or "Cloud Run execution failed"
    return JobStatus("FAILED", message.strip())


class CloudRunBackend:
    name = "cloudrun"

    def __init__(self, config: Config):
        self.config = config
        self._jobs: Any = None
        self._executions: Any = None

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def jobs(self) -> Any:
        if self._jobs is None:
            self._jobs = crc.jobs(self.config)
        return self._jobs

    @property
    def executions(self) -> Any:
        if self._executions is None:
            self._executions = crc.executions(self.config)
        return self._executions

    def _parent(self) -> str:
        return crc.location(self.config)

    def job_id(self, spec: JobSpec, size: Size) -> str:
        return cloud_run_name(f"{self.config.deployment_name}-{spec.stage}-{size.suffix}")

    def _ref(self, execution_name: str) -> JobRef:
        job, execution = execution_name.split("/jobs/", 1)[1].split("/executions/")
        url = (f"https://console.cloud.google.com/run/jobs/executions/details/{self.config.region}/{execution}"
               f"?project={self.config.project}")
        return JobRef(backend=self.name, id=cloud_run_job_id(job, execution), name=execution, url=url)

    def _execution_name(self, job_id: str) -> str:
        job, execution = parse_cloud_run_job_id(job_id)
        return f"{self._parent()}/jobs/{job}/executions/{execution}"

    def job_template(self, spec: JobSpec, size: Size) -> dict[str, Any]:
        """The Cloud Run job a stage's executions run (pure, so tests can check it without the API)."""
        if not self.config.job_image:
            raise ValueError("JOB_IMAGE is not configured: the Cloud Run backend needs the jobs image URI")
        from lbtrain.config import to_env

        env = to_env(self.config)
        container: dict[str, Any] = {
            "image": self.config.job_image,
            "env": [{"name": k, "value": env[k]} for k in JOB_ENV_KEYS if env.get(k)],
            "resources": {"limits": {"cpu": str(size.cpu), "memory": f"{size.memory_gib}Gi"}},
        }
        if spec.module:  # another program of the same image than its entrypoint (jobs.main)
            container["command"] = ["python", "-m", spec.module]
        # The job's ceiling; each execution's own timeout (its machine's max_hours) rides in RunJob's overrides,
        # so model types sharing a stage job never rewrite it back and forth.
        task: dict[str, Any] = {"containers": [container], "max_retries": 0, "timeout": f"{int(MAX_HOURS * 3600)}s"}
        if self.config.job_service_account:
            task["service_account"] = self.config.job_service_account
        labels = {"deployment": label_value(self.config.deployment_name), "stage": label_value(spec.stage),
                  "lbtrain": "stage-job"}
        return {"labels": labels, "template": {"task_count": 1, "template": task}}

    def ensure_job(self, spec: JobSpec, size: Size) -> str:
        """Create the stage's Cloud Run job, or update it when its template changed; its full name."""
        from google.api_core import exceptions as gexc
        from google.cloud import run_v2

        body = self.job_template(spec, size)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        job_id = self.job_id(spec, size)
        name = f"{self._parent()}/jobs/{job_id}"
        job = run_v2.Job(**body, annotations={SPEC_ANNOTATION: digest})
        try:
            current = self.jobs.get_job(name=name, retry=crc.retry(), timeout=crc.CALL_TIMEOUT_S)
        except gexc.NotFound:
            try:
                op = self.jobs.create_job(parent=self._parent(), job=job, job_id=job_id, retry=crc.retry(),
                                          timeout=crc.CALL_TIMEOUT_S)
                op.result(timeout=crc.RETRY_DEADLINE_S)
            except gexc.AlreadyExists:  # another launcher created it first: same template
                pass
            return name
        if current.annotations.get(SPEC_ANNOTATION) != digest:
            job.name = name
            op = self.jobs.update_job(job=job, retry=crc.retry(), timeout=crc.CALL_TIMEOUT_S)
            op.result(timeout=crc.RETRY_DEADLINE_S)
        return name

    # -- JobBackend ---------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> JobRef:
        from google.cloud import run_v2

        existing = self.find_by_name(spec.name)
        if existing is not None:  # a redelivery after a crash: never a second execution
            return existing
        size = size_for(machine_for(self.config, spec.model_type, spec.stage))
        job_name = self.ensure_job(spec, size)
        env = [run_v2.EnvVar(name=JOB_NAME_ENV, value=spec.name)]
        env += [run_v2.EnvVar(name=f"LBTRAIN_LABEL_{k.upper()}", value=label_value(v))
                for k, v in sorted(spec.labels.items())]
        overrides = run_v2.RunJobRequest.Overrides(
            container_overrides=[run_v2.RunJobRequest.Overrides.ContainerOverride(args=spec.args(), env=env)],
            task_count=1, timeout=f"{size.timeout_s}s")
        # No retry (see cloudrun_client): a lost answer is found by the next delivery's find_by_name.
        op = self.jobs.run_job(request=run_v2.RunJobRequest(name=job_name, overrides=overrides),
                               timeout=crc.CALL_TIMEOUT_S)
        return self._ref(op.metadata.name)

    def _get(self, job_id: str) -> Any | None:
        from google.api_core import exceptions as gexc

        try:
            return self.executions.get_execution(name=self._execution_name(job_id), retry=crc.retry(),
                                                 timeout=crc.CALL_TIMEOUT_S)
        except gexc.NotFound:
            return None

    def get_status(self, job_id: str) -> JobStatus:
        execution = self._get(job_id)
        if execution is None:
            return JobStatus("FAILED", f"Cloud Run execution {job_id} does not exist")
        return status_of(execution)

    @staticmethod
    def _env(execution: Any) -> dict[str, str]:
        containers = execution.template.containers
        return {e.name: e.value for e in containers[0].env} if containers else {}

    @staticmethod
    def _args(execution: Any) -> dict[str, str]:
        containers = execution.template.containers
        args = list(containers[0].args) if containers else []
        return {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}

    def job_step(self, job_id: str) -> dict[str, Any] | None:
        """The step an execution of this deployment runs, from its arguments; None for foreign ones."""
        if not job_id.startswith(CLOUD_RUN_JOB_ID_PREFIX):
            return None
        execution = self._get(job_id)
        if execution is None:
            return None
        if execution.labels.get("deployment") != label_value(self.config.deployment_name):
            return None
        args = self._args(execution)
        if not args.get("--run-id") or not args.get("--stage") or not args.get("--attempt", "").isdigit():
            return None
        return {"run_id": args["--run-id"], "stage": args["--stage"], "attempt": int(args["--attempt"])}

    def find_by_name(self, name: str) -> JobRef | None:
        """The execution started for this deterministic job name, looked up through its env override
        among the executions of this deployment's stage jobs."""
        dep = label_value(self.config.deployment_name)
        jobs = self.jobs.list_jobs(parent=self._parent(), retry=crc.retry(), timeout=crc.CALL_TIMEOUT_S)
        for job in jobs:
            if job.labels.get("deployment") != dep or job.labels.get("lbtrain") != "stage-job":
                continue
            if job.labels.get("stage") and f"-{job.labels['stage']}-a" not in name:
                continue
            for execution in self.executions.list_executions(parent=job.name, retry=crc.retry(),
                                                             timeout=crc.CALL_TIMEOUT_S):
                if self._env(execution).get(JOB_NAME_ENV) == name:
                    return self._ref(execution.name)
        return None

    def cancel(self, job_id: str) -> None:
        execution = self._get(job_id)
        if execution is None or status_of(execution).terminal:
            return
        op = self.executions.cancel_execution(name=execution.name, retry=crc.retry(), timeout=crc.CALL_TIMEOUT_S)
        del op  # the cancel completes asynchronously; its log-sink entry follows


__all__ = ["CloudRunBackend", "Size", "size_for", "status_of", "cloud_run_name"]
