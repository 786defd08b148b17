"""The job backend port: how stages' jobs are launched. LocalBackend runs them as subprocesses;
a Vertex AI backend implements the same four calls with CustomJobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from lbtrain.domain import JobRef, JobStatus


@dataclass(frozen=True)
class JobSpec:
    name: str  # deterministic: domain.job_name(...)
    run_id: str
    stage: str
    attempt: int
    model_type: str
    inputs_uri: str
    outputs_uri: str
    labels: dict[str, str] = field(default_factory=dict)
    # The Python module the job runs (`python -m`); "" for the stages' own (JOB_MODULE locally, the jobs
    # image's entrypoint on Vertex). The modelrun job names its own: it is no model stage.
    module: str = ""
    # The attempt's place in the stage's machine fallback list (a capacity failure moves it on).
    machine_index: int = 0
    # The trained model file's SHA-256 as recorded in Firestore, for the stages that load the model: an
    # argument of the job itself, which jobs cannot change (unlike anything in the artifact bucket).
    model_sha256: str = ""

    def args(self) -> list[str]:
        """The job arguments of docs/architecture.md §4."""
        args = ["--run-id", self.run_id, "--stage", self.stage, "--attempt", str(self.attempt),
                "--inputs", self.inputs_uri, "--outputs", self.outputs_uri]
        return args + (["--model-sha256", self.model_sha256] if self.model_sha256 else [])


class JobBackend(Protocol):
    name: str

    def submit(self, spec: JobSpec) -> JobRef:
        """Start the job without waiting for it. Submitting a name that exists returns that job."""

    def get_status(self, job_id: str) -> JobStatus:
        """The job's real state, read from the backend."""

    def find_by_name(self, name: str) -> JobRef | None:
        """The job submitted under this deterministic name, if any (crash recovery)."""

    def cancel(self, job_id: str) -> None:
        """Ask the job to stop; its completion event follows with state CANCELLED."""

    def machine_label(self, spec: JobSpec) -> str:
        """The machine this spec's job runs on, as the run document records it."""


def from_config(config, bus_factory=None) -> JobBackend:  # noqa: ANN001
    if config.stage_backends or config.job_backend == "cloudrun":
        # Stages on different backends (docs/architecture.md §4): route each spec and each job id.
        from lbtrain.adapters.dispatch_backend import DispatchBackend

        return DispatchBackend(config)
    if config.job_backend == "local":
        from lbtrain.adapters.local_backend import LocalBackend

        return LocalBackend(config)
    if config.job_backend == "vertex":
        from lbtrain.adapters.vertex_backend import VertexBackend

        return VertexBackend(config)
    raise ValueError(f"JOB_BACKEND={config.job_backend!r} is unknown; use local, vertex or cloudrun")
