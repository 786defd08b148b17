"""Label webhooks → retraining rules → new Labelbox model runs and pipeline runs.

Labelbox's label webhooks (`LABEL_CREATED`, `LABEL_UPDATED`, `LABEL_DELETED`, `WORKFLOW_ACTION`) are
triggers only: the body names a project and a label (or data row); what gets trained is re-read from
Labelbox when the new model run is created. Counting and coalescing live in the trigger store's
transactions; this module parses deliveries, validates rules and releases held runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lbtrain import domain as d
from lbtrain import pipelines
from lbtrain.deps import Deps
from lbtrain.intake import is_valid_id, publish_step
from lbtrain.messages import BadMessage, check_storable
from lbtrain.reporting import report_status

log = logging.getLogger("lbtrain.triggers")

LABEL_TOPICS = ("LABEL_CREATED", "LABEL_UPDATED", "LABEL_DELETED", "WORKFLOW_ACTION")
MAX_MIN_LABELS = 1_000_000
MAX_INTERVAL = 10 * 365 * 24 * 3600  # ten years, in seconds
MAX_LABEL_ID = 256  # Labelbox ids are ~25-character cuids; a label's key is stored on its marker


@dataclass(frozen=True)
class LabelEvent:
    topic: str
    project_id: str
    key: str  # what is counted once per epoch: the label id, or the data row for workflow actions


@dataclass
class Rule:
    model_type: str
    model_id: str
    min_labels: int = 100
    min_interval_seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True

    @classmethod
    def from_dict(cls, data: Any) -> Rule:
        """Validate a rule from the API/CLI; BadMessage names the bad field."""
        if not isinstance(data, dict):
            raise BadMessage("a rule must be a JSON object")
        unknown = set(data) - {"model_type", "model_id", "min_labels", "min_interval_seconds", "params", "enabled",
                               "project_id"}
        if unknown:
            raise BadMessage(f"unknown field(s): {', '.join(sorted(unknown))}")
        model_type = data.get("model_type")
        if not isinstance(model_type, str) or not model_type:
            raise BadMessage("missing field: model_type")
        try:
            pipelines.get(model_type)
        except pipelines.UnknownModelType as exc:
            raise BadMessage(str(exc)) from None
        model_id = data.get("model_id")
        if not isinstance(model_id, str) or not is_valid_id(model_id):
            raise BadMessage("model_id must be the Labelbox model id the new model runs are created under")
        min_labels = data.get("min_labels", 100)
        if not isinstance(min_labels, int) or isinstance(min_labels, bool) or not 1 <= min_labels <= MAX_MIN_LABELS:
            raise BadMessage(f"min_labels must be an integer from 1 to {MAX_MIN_LABELS}")
        interval = data.get("min_interval_seconds", 0)
        if not isinstance(interval, int | float) or isinstance(interval, bool) or not 0 <= interval <= MAX_INTERVAL:
            raise BadMessage(f"min_interval_seconds must be a number from 0 to {MAX_INTERVAL}")
        params = data.get("params")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise BadMessage("params must be an object")
        check_storable(params)
        if "prelabel" in params:  # a rule's runs pre-label its project unless params.prelabel is false
            from lbtrain.prelabel import PrelabelError, normalize

            try:
                normalize(params["prelabel"])
            except PrelabelError as exc:
                raise BadMessage(str(exc)) from None
        enabled = data.get("enabled", True)
        if not isinstance(enabled, bool):
            raise BadMessage("enabled must be true or false")
        return cls(model_type, model_id, min_labels, float(interval), params, enabled)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "model_id": self.model_id, "min_labels": self.min_labels,
                "min_interval_seconds": self.min_interval_seconds, "params": self.params, "enabled": self.enabled}


def _id_of(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def parse_label_event(topic: str, body: Any) -> LabelEvent | None:
    """None for topics we don't count (acknowledged, logged); BadMessage for a malformed delivery."""
    if topic not in LABEL_TOPICS:
        return None
    if not isinstance(body, dict):
        raise BadMessage("the body must be a JSON object")
    project_id = _id_of(body.get("project"))
    if not project_id:
        raise BadMessage(f"{topic} delivery without project.id")
    if not is_valid_id(project_id):
        raise BadMessage(f"project id {project_id!r} is not a valid id")
    label_id = _id_of(body.get("label")) if isinstance(body.get("label"), dict) else ""
    label_id = label_id or (body.get("id") if isinstance(body.get("id"), str) else "")
    data_row_id = _id_of(body.get("dataRow") or body.get("data_row"))
    if len(label_id) > MAX_LABEL_ID or len(data_row_id) > MAX_LABEL_ID:
        raise BadMessage(f"{topic} delivery with a label or data row id longer than {MAX_LABEL_ID} characters")
    if topic == "WORKFLOW_ACTION" or not label_id:
        if not data_row_id:
            raise BadMessage(f"{topic} delivery names neither a label (id) nor a data row (dataRow.id)")
        return LabelEvent(topic, project_id, f"data_row:{data_row_id}")
    return LabelEvent(topic, project_id, f"label:{label_id}")


def handle_label_delivery(deps: Deps, topic: str, body: Any, delivery_id: str) -> dict[str, Any]:
    """Count one label webhook delivery; release the rule's held run when it may start."""
    event = parse_label_event(topic, body)
    if event is None:
        log.info("label webhook topic %r ignored", topic, extra={"fields": {"delivery_id": delivery_id}})
        return {"outcome": "ignored", "reason": f"topic {topic or '(none)'} does not count towards retraining"}
    trigger = {"source": "label_webhook", "delivery_id": delivery_id, "event": topic}
    result = deps.triggers.record_label_event(event.project_id, event.key, f"label:{delivery_id}", trigger,
                                              d.new_run_id())
    answer: dict[str, Any] = {"outcome": result.outcome, "project_id": event.project_id, "pending": result.pending}
    if result.min_labels is not None:
        answer["min_labels"] = result.min_labels
    if result.run_id:
        answer["run_id"] = result.run_id
        release(deps, event.project_id)
        answer["waiting"] = deps.store.get_run(result.run_id).get("waiting") or ""
    log.info("label %s for project %s: %s (%d pending)", event.key, event.project_id, result.outcome, result.pending,
             extra={"fields": {"delivery_id": delivery_id, "run_id": result.run_id}})
    return answer


RELEASE = "release"  # `kind` attribute of a runs-topic message that offers a released rule run's modelrun step


def release(deps: Deps, project_id: str) -> str | None:
    """Release the rule's held run if nothing blocks it; its id, else None.

    Creating the Labelbox model run (labels, export, splits) can take minutes for a big project, so
    it is a job (the run's `modelrun` step), launched like any step: the claim transaction lets one
    job exist per attempt whatever the redeliveries. Nothing here talks to Labelbox.
    """
    from lbtrain import admission

    limited = admission.enabled(deps.config)
    run_id = deps.triggers.claim_release(project_id, admission_hold=limited)
    if run_id is None:
        return None
    if limited:  # the released run takes a slot (its modelrun step published) or waits in the queue
        admission.start(deps, run_id)
    else:
        publish_step(deps, run_id, d.MODELRUN, 1)
    return run_id


def start_released(deps: Deps, run_id: str) -> str | None:
    """A `release` message (redelivered, or from an older version): offer the run's modelrun step to the
    launcher again; its id if offered. Quick and without Labelbox: the push request only does a
    Firestore transaction and a publish; duplicates are no-ops at the launcher's claim."""
    attempt = deps.triggers.prepare_release(run_id)
    if attempt is None:
        return None
    publish_step(deps, run_id, d.MODELRUN, attempt)
    return run_id


def model_run_created(deps: Deps, run: dict[str, Any]) -> None:
    """The modelrun job's completion gave the run its model run: Labelbox hears the run start."""
    rule_project = (run.get("trigger") or {}).get("project_id", "")
    report_status(deps, run["model_run_id"], "EXPORTING_DATA", run_id=run["run_id"],
                  metadata={"trigger": f"labels in project {rule_project}"})
    log.info("run %s started for project %s as model run %s", run["run_id"], rule_project, run["model_run_id"],
             extra={"fields": {"run_id": run["run_id"]}})


def on_run_finished(deps: Deps, run: dict[str, Any]) -> None:
    """A run started by a rule ended: free the rule and start its follow-up if one waits."""
    trigger = run.get("trigger") or {}
    if trigger.get("source") != "label_webhook" or not trigger.get("project_id"):
        return
    if deps.triggers.run_finished(trigger["project_id"], run["run_id"]):
        release(deps, trigger["project_id"])


def sweep(deps: Deps, stale_after: timedelta, at: datetime | None = None) -> list[str]:
    """Reconciler part: relaunch the model run creation of stalled releases (a failed modelrun job gets
    attempt + 1), release held runs whose interval has passed."""
    actions = []
    for run in deps.triggers.stalled_releases(stale_after, at):
        attempt = deps.triggers.prepare_release(run["run_id"], relaunch=True)
        if attempt is not None:
            publish_step(deps, run["run_id"], d.MODELRUN, attempt)
            actions.append(f"{run['run_id']}: modelrun a{attempt} offered after a stalled release")
    for rule in deps.triggers.list_rules():
        if rule.get("queued_run_id") and not rule.get("active_run_id"):
            started = release(deps, rule["project_id"])
            if started:
                actions.append(f"{started}: released for project {rule['project_id']}")
    return actions
