"""DispatchBackend: each stage's job goes to the backend that suits it (STAGE_BACKENDS), and each job id
back to the backend that owns it.

Why: a four-minute CPU etl on Vertex pays for a VM's provisioning; the same job as a Cloud Run execution
starts in seconds. Vertex stays where it is needed: a GPU, or a run longer than a Cloud Run task may last.

Choice (most specific pattern wins, as in JOB_MACHINES): STAGE_BACKENDS entries first, e.g.
`{"*/etl": "cloudrun", "*/train": "vertex", "text_*/train": "cloudrun"}`; for stages no entry matches,
JOB_BACKEND decides: `local` and `vertex` everything, `cloudrun` everything except the stages whose machine
(JOB_MACHINES, MODEL_OPTIONS) has a GPU or more than 24 h, which go to Vertex.

Ownership by id alone: `crj.…` is a Cloud Run execution, digits a Vertex CustomJob, anything else a local
job name (messages.cloud_run_job_id).
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from lbtrain.adapters.backend import JobSpec
from lbtrain.config import Config
from lbtrain.domain import JobRef, JobStatus
from lbtrain.messages import CLOUD_RUN_JOB_ID_PREFIX


def most_specific(table: dict[str, Any], key: str) -> Any | None:
    """The value of the pattern that matches `model_type/stage` most specifically (no glob beats a glob,
    a `type/stage` pattern beats a bare type, then the longer pattern); None when none matches."""
    candidates = [
        (pattern.count("*") == 0, "/" in pattern, len(pattern), value)
        for pattern, value in table.items()
        if fnmatch.fnmatchcase(key, pattern if "/" in pattern else f"{pattern}/*")
    ]
    return max(candidates, key=lambda c: c[:3])[3] if candidates else None


def explicit_table(config: Config) -> dict[str, str]:
    return json.loads(config.stage_backends) if config.stage_backends else {}


def backend_for(config: Config, model_type: str, stage: str) -> str:
    """The backend that runs `model_type/stage` (docstring of this module)."""
    chosen = most_specific(explicit_table(config), f"{model_type}/{stage}")
    if chosen:
        return str(chosen)
    if config.job_backend != "cloudrun":
        return config.job_backend
    from lbtrain.adapters.cloudrun_backend import MAX_HOURS
    from lbtrain.adapters.vertex_backend import machine_for

    machine = machine_for(config, model_type, stage)
    return "vertex" if machine.gpu or machine.max_hours > MAX_HOURS else "cloudrun"


def owner_of(job_id: str) -> str:
    if job_id.startswith(CLOUD_RUN_JOB_ID_PREFIX):
        return "cloudrun"
    return "vertex" if job_id.isdigit() else "local"


def make(config: Config, name: str) -> Any:
    if name == "local":
        from lbtrain.adapters.local_backend import LocalBackend

        return LocalBackend(config)
    if name == "vertex":
        from lbtrain.adapters.vertex_backend import VertexBackend

        return VertexBackend(config)
    if name == "cloudrun":
        from lbtrain.adapters.cloudrun_backend import CloudRunBackend

        return CloudRunBackend(config)
    raise ValueError(f"unknown job backend {name!r}; use local, vertex or cloudrun")


class DispatchBackend:
    name = "dispatch"

    def __init__(self, config: Config):
        self.config = config
        self._backends: dict[str, Any] = {}

    def backend(self, name: str) -> Any:
        if name not in self._backends:
            self._backends[name] = make(self.config, name)
        return self._backends[name]

    def in_use(self) -> list[str]:
        """Every backend some stage may be routed to (the default first)."""
        names = [self.config.job_backend, *explicit_table(self.config).values()]
        if self.config.job_backend == "cloudrun":
            names.append("vertex")
        return list(dict.fromkeys(names))

    def submit(self, spec: JobSpec) -> JobRef:
        return self.backend(backend_for(self.config, spec.model_type, spec.stage)).submit(spec)

    def get_status(self, job_id: str) -> JobStatus:
        return self.backend(owner_of(job_id)).get_status(job_id)

    def machine_label(self, spec: JobSpec) -> str:
        """The machine as the backend the spec is routed to names it (a Cloud Run size, a Vertex machine)."""
        chosen = self.backend(backend_for(self.config, spec.model_type, spec.stage))
        label = getattr(chosen, "machine_label", None)
        return label(spec) if label is not None else chosen.name

    def stop_all(self) -> int:
        """Local jobs are ours to stop when the dev stack ends (as LocalBackend.stop_all)."""
        stop = getattr(self.backend("local"), "stop_all", None) if "local" in self.in_use() else None
        return stop() if stop is not None else 0

    def cancel(self, job_id: str) -> None:
        self.backend(owner_of(job_id)).cancel(job_id)

    def job_step(self, job_id: str) -> dict[str, Any] | None:
        lookup = getattr(self.backend(owner_of(job_id)), "job_step", None)
        return lookup(job_id) if lookup is not None else None

    def find_by_name(self, name: str) -> JobRef | None:
        """The name alone does not say the model type, so every backend in use is asked."""
        for backend in self.in_use():
            found = self.backend(backend).find_by_name(name)
            if found is not None:
                return found
        return None
