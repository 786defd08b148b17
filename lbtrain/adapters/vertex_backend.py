"""VertexBackend: stages run as Vertex AI CustomJobs (google-cloud-aiplatform, imported on first use).

The same four calls as LocalBackend: submit without blocking under the deterministic name,
state by id, find by name (crash recovery), cancel. The completion event comes from a Cloud
Logging sink on `resource.type="ml_job"`; the state is always re-read here.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from typing import Any

from lbtrain import storage
from lbtrain.adapters.backend import JobSpec
from lbtrain.config import Config
from lbtrain.domain import JobRef, JobStatus

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "PARTIALLY_SUCCEEDED"}
# Environment a job needs to find its config. Secret values are never passed this way: a job gets
# the Secret Manager resource name (LABELBOX_API_KEY_SECRET) and reads the value itself (lbtrain/secrets.py).
JOB_ENV_KEYS = ("DEPLOYMENT_NAME", "GOOGLE_CLOUD_PROJECT", "REGION", "ARTIFACT_ROOT", "LABELBOX_BACKEND",
                "LABELBOX_DIR", "LABELBOX_ENDPOINT", "LABELBOX_API_KEY_SECRET", "SECRET_MANAGER_API_ENDPOINT",
                "LBTRAIN_MIN_EXAMPLES", "JOB_BACKEND", "VERTEX_API_ENDPOINT", "STORAGE_EMULATOR_HOST",
                "MODEL_OPTIONS", "SERVING_IMAGE", "SERVING_MACHINE", "JOB_SERVICE_ACCOUNT",
                # Deploy on Cloud Run (jobs/cloudrun_deploy.py).
                "SERVING_BACKENDS", "CLOUD_RUN_API_ENDPOINT",
                # Row-data fetch policy and image limits (lbtrain/fetch.py, jobs/tasks/images.py).
                "MEDIA_BUCKETS", "LBTRAIN_FETCH_MAX_IMAGE_BYTES", "LBTRAIN_FETCH_MAX_TEXT_BYTES",
                "LBTRAIN_FETCH_DEADLINE_SECONDS", "LBTRAIN_MAX_IMAGE_PIXELS")


# Scheduling strategies a machine entry may ask for (aiplatform_v1 Scheduling.Strategy names).
STRATEGIES = ("ON_DEMAND", "LOW_COST", "STANDARD", "SPOT", "FLEX_START")


@dataclass(frozen=True)
class Machine:
    machine_type: str = "n1-standard-4"
    accelerator_type: str = ""
    accelerator_count: int = 0
    # Vertex cancels a job that runs longer (scheduling.timeout): a hung job can't run up a bill.
    max_hours: float = 24.0
    # Scheduling.strategy ("" = Vertex's default): SPOT (cheaper, may be preempted: a preemption is
    # retried) or FLEX_START (Dynamic Workload Scheduler: queues for capacity up to max_wait_hours).
    strategy: str = ""
    # Scheduling.max_wait_duration: a job not started by then fails and is retried on the next machine.
    max_wait_hours: float = 0.0

    @property
    def gpu(self) -> bool:
        return bool(self.accelerator_type and self.accelerator_count)

    def label(self) -> str:
        """How the run document and the dashboard name it: `g2-standard-8 + 1×NVIDIA_L4 (spot)`."""
        text = self.machine_type + (f" + {self.accelerator_count}×{self.accelerator_type}" if self.gpu else "")
        return text + (f" ({self.strategy.lower().replace('_', '-')})" if self.strategy else "")


# Defaults: CPU everywhere; images get a bigger CPU machine. A GPU is opt-in through configuration.
DEFAULT_MACHINES: dict[str, dict[str, Any]] = {
    "*": {"machine_type": "n1-standard-4"},
    "image_*/train": {"machine_type": "n1-standard-8"},
    "bounding_box/train": {"machine_type": "n1-standard-8"},
    # A rule run's model run creation only waits on Labelbox (upsert, export, splits).
    "*/modelrun": {"machine_type": "n1-standard-2", "max_hours": 6.0},
}
# With AutoML (MODEL_OPTIONS) the train/evaluate jobs only drive Vertex's pipeline and batch
# prediction: a small machine, and time for the training budget.
AUTOML_MACHINES: dict[str, dict[str, Any]] = {
    "train": {"machine_type": "n1-standard-2", "max_hours": 72.0},
    "evaluate": {"machine_type": "n1-standard-2", "max_hours": 24.0},
}


def machine_for(config: Config, model_type: str, stage: str, index: int = 0) -> Machine:
    """The `index`-th machine of the stage's fallback list (its last one past the end)."""
    machines = machines_for(config, model_type, stage)
    return machines[min(max(index, 0), len(machines) - 1)]


def machines_for(config: Config, model_type: str, stage: str) -> list[Machine]:
    """Most specific match wins among `model_type/stage`, `model_type`, `*/stage`, `*` (globs allowed).

    `JOB_MACHINES` (JSON) extends the defaults, e.g.
    `{"image_*/train": {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4",
    "accelerator_count": 1}}`. A pattern may give an ordered list of machines instead, tried in
    turn when a job finds no capacity or quota (docs/architecture.md §7.8), e.g.
    `[{"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1,
    "strategy": "SPOT"}, {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4",
    "accelerator_count": 1}, {"machine_type": "n1-standard-8"}]`.
    """
    from lbtrain import model_options

    table = dict(DEFAULT_MACHINES)
    if model_options.for_type(config.model_options, model_type).automl:
        table.update({f"{model_type}/{stage}": spec for stage, spec in AUTOML_MACHINES.items()})
    if config.job_machines:
        try:
            extra = json.loads(config.job_machines)
        except json.JSONDecodeError as exc:
            raise ValueError(f"JOB_MACHINES is not JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ValueError("JOB_MACHINES must be a JSON object of pattern → machine")
        table.update(extra)
    key = f"{model_type}/{stage}"
    candidates = [
        (pattern.count("*") == 0, "/" in pattern, len(pattern), spec)
        for pattern, spec in table.items()
        if fnmatch.fnmatchcase(key, pattern if "/" in pattern else f"{pattern}/*")
    ]
    if not candidates:
        return [Machine()]
    specs = max(candidates, key=lambda c: c[:3])[3]
    specs = specs if isinstance(specs, list) else [specs]
    if not specs or not all(isinstance(spec, dict) for spec in specs):
        raise ValueError("JOB_MACHINES: each pattern gives a machine object or a non-empty list of them")
    return [_machine(spec) for spec in specs]


def _machine(spec: dict[str, Any]) -> Machine:
    allowed = {"machine_type", "accelerator_type", "accelerator_count", "max_hours", "strategy", "max_wait_hours"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"JOB_MACHINES: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    strategy = str(spec.get("strategy") or "").upper().replace("-", "_")
    if strategy and strategy not in STRATEGIES:
        raise ValueError(f"JOB_MACHINES: strategy {spec['strategy']!r} is not one of {', '.join(STRATEGIES)}")
    return Machine(**{**spec, "strategy": strategy})


def label_value(value: str) -> str:
    """Vertex labels: ≤ 63 chars of lowercase letters, digits, '_' and '-'."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "-" for c in value.lower())
    return out[:63]


def job_id_of(resource_name: str) -> str:
    return resource_name.rsplit("/", 1)[-1]


class VertexBackend:
    name = "vertex"

    def __init__(self, config: Config):
        self.config = config

    # -- plumbing ---------------------------------------------------------------------------
    def _aip(self) -> Any:
        from lbtrain.adapters import vertex_client

        return vertex_client.aiplatform(self.config)

    def _get(self, job_id: str) -> Any:
        """The CustomJob (every state read re-fetches it); google.api_core NotFound if there is none."""
        return self._aip().CustomJob.get(resource_name=job_id, project=self.config.project,
                                         location=self.config.region)

    def _find(self, job_id: str) -> Any | None:
        from google.api_core import exceptions as gexc

        try:
            return self._get(job_id)
        except gexc.NotFound:
            return None

    def _ref(self, job: Any) -> JobRef:
        job_id = job_id_of(job.resource_name)
        url = (f"https://console.cloud.google.com/vertex-ai/locations/{self.config.region}/training/"
               f"{job_id}/cpu?project={self.config.project}")
        return JobRef(backend=self.name, id=job_id, name=job.display_name, url=url)

    def machine(self, spec: JobSpec) -> Machine:
        """The machine of this attempt: the step's place in the stage's fallback list."""
        return machine_for(self.config, spec.model_type, spec.stage, spec.machine_index)

    def machine_label(self, spec: JobSpec) -> str:
        return self.machine(spec).label()

    def job_spec(self, spec: JobSpec, machine: Machine | None = None) -> dict[str, Any]:
        """The worker pool of a stage's CustomJob (pure, so tests can check it without the API)."""
        machine = machine or self.machine(spec)
        image = (self.config.job_image_gpu if machine.gpu and self.config.job_image_gpu else self.config.job_image)
        if not image:
            raise ValueError("JOB_IMAGE is not configured: the Vertex backend needs the jobs image URI")
        from lbtrain.config import to_env

        env = to_env(self.config)
        machine_spec: dict[str, Any] = {"machine_type": machine.machine_type}
        if machine.gpu:
            machine_spec.update(accelerator_type=machine.accelerator_type,
                                accelerator_count=machine.accelerator_count)
        container: dict[str, Any] = {
            "image_uri": image,
            "args": spec.args(),
            "env": [{"name": k, "value": env[k]} for k in JOB_ENV_KEYS if env.get(k)],
        }
        if spec.module:  # another program of the same image than its entrypoint (jobs.main)
            container["command"] = ["python", "-m", spec.module]
        return {"machine_spec": machine_spec, "replica_count": 1, "container_spec": container}

    # -- JobBackend ---------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> JobRef:
        existing = self.find_by_name(spec.name)
        if existing is not None:  # a redelivery after a crash: never a second job
            return existing
        aiplatform = self._aip()
        machine = self.machine(spec)
        job = aiplatform.CustomJob(
            display_name=spec.name,
            worker_pool_specs=[self.job_spec(spec, machine)],
            base_output_dir=storage.join(spec.outputs_uri, "vertex"),
            labels={k: label_value(v) for k, v in spec.labels.items()},
            project=self.config.project,
            location=self.config.region,
            staging_bucket=self.config.artifact_root,  # required by the SDK; base_output_dir decides
        )
        scheduling: dict[str, Any] = {}
        if machine.strategy:
            from google.cloud.aiplatform_v1.types import Scheduling

            scheduling["scheduling_strategy"] = Scheduling.Strategy[machine.strategy]
        if machine.max_wait_hours:
            scheduling["max_wait_duration"] = int(machine.max_wait_hours * 3600)
        job.submit(service_account=self.config.job_service_account or None, create_request_timeout=60,
                   timeout=int(machine.max_hours * 3600), **scheduling)
        return self._ref(job)

    def get_status(self, job_id: str) -> JobStatus:
        job = self._find(job_id)
        if job is None:
            return JobStatus("FAILED", f"Vertex AI job {job_id} does not exist")
        state = job.state.name.removeprefix("JOB_STATE_")
        error, code = "", 0
        if state in ("FAILED", "EXPIRED", "PARTIALLY_SUCCEEDED"):
            error = (job.gca_resource.error.message or f"Vertex AI job {state.lower()}").strip()
            code = int(job.gca_resource.error.code or 0)
        return JobStatus(state if state in TERMINAL else "RUNNING" if state == "RUNNING" else "PENDING", error,
                         code=code)

    def job_step(self, job_id: str) -> dict[str, Any] | None:
        """The step a job of this deployment runs, from its labels; None for unknown or foreign jobs.

        A fast job can end before its launcher has recorded it (the jobs/ index is written after
        submit returns): its log-sink entry then still finds its step this way.
        """
        job = self._find(job_id)
        if job is None:
            return None
        labels = dict(job.labels or {})
        if labels.get("deployment") != label_value(self.config.deployment_name):
            return None
        if not labels.get("run_id") or not labels.get("stage") or not str(labels.get("attempt", "")).isdigit():
            return None
        return {"run_id": labels["run_id"], "stage": labels["stage"], "attempt": int(labels["attempt"])}

    def find_by_name(self, name: str) -> JobRef | None:
        aiplatform = self._aip()
        jobs = aiplatform.CustomJob.list(filter=f'display_name="{name}"', project=self.config.project,
                                         location=self.config.region)
        live = [j for j in jobs if j.display_name == name]
        return self._ref(live[0]) if live else None

    def cancel(self, job_id: str) -> None:
        job = self._get(job_id)
        if job.state.name.removeprefix("JOB_STATE_") not in TERMINAL:
            job.cancel()
