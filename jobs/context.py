"""What a stage module receives (`StageContext`) and returns (`StageResult`).

Built by `jobs.main` from the command line, the launcher's inputs.json and the environment;
stage modules read only through it, so they never parse arguments or touch os.environ.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobs.tasks.base import JobError
from lbtrain import log, storage
from lbtrain.config import Config

if TYPE_CHECKING:
    from jobs.tasks.base import Task
    from lbtrain.adapters.labelbox import Labelbox
    from lbtrain.progress import Writer

OUTPUTS_FILE = "outputs.json"
ERROR_FILE = "error.json"


@dataclass
class StageContext:
    run_id: str
    stage: str
    attempt: int
    model_type: str
    model_run_id: str
    model_id: str
    params: dict[str, Any]
    upstream: dict[str, str]  # stage → outputs dir URI of the earlier successful step
    outputs_uri: str
    config: Config
    task: Task
    logger: logging.Logger = field(default_factory=lambda: log.get("jobs"))
    tracker: Writer | None = None  # progress.json in the outputs dir (lbtrain/progress.py)
    model_sha256: str = ""  # the trained model file's digest recorded by job-events (--model-sha256)

    def progress(self, message: str, **fields: Any) -> None:
        """One JSON log line with structured fields (what the dashboard's log link shows); an
        `iteration` field (lbtrain.progress.report) also updates progress.json."""
        log.event(self.logger, message, **fields)
        iteration = fields.get("iteration")
        if self.tracker is not None and isinstance(iteration, dict):
            self.tracker.update(**iteration)

    def out(self, *parts: str) -> str:
        return storage.join(self.outputs_uri, *parts)

    def upstream_uri(self, stage: str) -> str:
        uri = self.upstream.get(stage)
        if not uri:
            raise JobError(
                f"the {self.stage} stage needs the outputs of the {stage} stage, "
                f"but inputs.upstream has no {stage!r} entry"
            )
        return uri

    def upstream_outputs(self, stage: str) -> dict[str, Any]:
        """The outputs.json manifest of an earlier stage."""
        uri = storage.join(self.upstream_uri(stage), OUTPUTS_FILE)
        if not storage.exists(uri):
            raise JobError(
                f"the {stage} stage's outputs at {self.upstream_uri(stage)} have no {OUTPUTS_FILE}"
            )
        return storage.read_json(uri)

    def upstream_artifact(self, stage: str, name: str, default: str) -> str:
        """URI of artifact `name` of an earlier stage (from its manifest, else the default file name)."""
        uris = self.upstream_outputs(stage).get("uris") or {}
        return uris.get(name) or storage.join(self.upstream_uri(stage), default)

    def labelbox(self) -> Labelbox:
        from lbtrain.adapters import labelbox

        return labelbox.from_config(self.config)


@dataclass
class StageResult:
    uris: dict[str, str]
    metrics: dict[str, Any]
    model_sha256: str = ""  # train only: the model file's digest (outputs.json "model_sha256")


def safe_name(*parts: str, limit: int = 200) -> str:
    """Labelbox upload / file names: [A-Za-z0-9._-] only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-")[:limit] or "lbtrain"


def scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers/strings/bools of a metrics dict (outputs.json stays small)."""
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, str | int | float | bool)}
