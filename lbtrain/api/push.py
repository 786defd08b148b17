"""Pub/Sub push endpoints: runs topic, per-stage launcher, job events, dead letters."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app

from lbtrain import log as logmod
from lbtrain import pipelines
from lbtrain.api.common import ApiError, deps_of, json_body, push_handler, verify_push
from lbtrain.completion import finish_report, handle_job_event
from lbtrain.deps import Deps
from lbtrain.domain import MODELRUN
from lbtrain.intake import start_run
from lbtrain.launch import handle_step
from lbtrain.messages import BadMessage, RunRequest, StepMessage, decode_push, is_valid_id, parse_job_event
from lbtrain.prelabel import PRELABEL

log = logging.getLogger("lbtrain.push")


def all_stages() -> list[str]:
    """Every stage a launcher serves: a rule run's modelrun step, the pipelines' stages, prelabel."""
    seen: dict[str, None] = {MODELRUN: None}
    for name in pipelines.names():
        seen.update(dict.fromkeys(pipelines.get(name).stages))
    seen[PRELABEL] = None  # after deploy, for the runs that have it (lbtrain/prelabel.py)
    return list(seen)


@push_handler
def process_run_request(deps: Deps, envelope: Any) -> str:
    msg = decode_push(envelope)
    if msg.attributes.get("kind") == "release":  # a retraining rule's run: offer its modelrun step again
        from lbtrain import triggers

        run_id = (msg.data or {}).get("release_run_id") if isinstance(msg.data, dict) else None
        if not run_id:
            raise BadMessage("release message without release_run_id")
        if not is_valid_id(run_id):
            raise BadMessage(f"release_run_id {str(run_id)[:80]!r} is not a run id")
        offered = triggers.start_released(deps, run_id)
        return f"release of run {run_id}: " + ("modelrun step offered to the launcher" if offered else
                                               "no-op (not released, or its modelrun step is under way or done)")
    req = RunRequest.from_dict(msg.data)
    key = req.idempotency_key or f"pubsub:{msg.message_id}"
    result = start_run(deps, req, trigger={"source": req.source or "pubsub", "delivery_id": key},
                       delivery_key=key)
    outcome = f"run request {msg.message_id}: run {result.run_id} ({'created' if result.created else result.reason})"
    log.info(outcome)
    return outcome


def _step_handler(stage: str):  # noqa: ANN202
    @push_handler
    def process(deps: Deps, envelope: Any) -> str:
        msg = decode_push(envelope)
        step = StepMessage.from_dict(msg.data)
        if step.stage != stage or msg.attributes.get("stage", stage) != stage:
            # The emulator ignores subscription filters; a misrouted message is acked, not retried.
            return f"no-op: step message for {step.stage} reached the {stage} launcher"
        with logmod.bind(run_id=step.run_id, stage=step.stage, attempt=step.attempt):
            outcome = handle_step(deps, step)
            log.info(outcome)
            return outcome

    return process


@push_handler
def process_job_event(deps: Deps, envelope: Any) -> str:
    msg = decode_push(envelope)
    event = parse_job_event(msg.data)
    with logmod.bind(run_id=event.run_id, stage=event.stage, attempt=event.attempt or None):
        outcome = handle_job_event(deps, event)
        log.info(outcome)
        return outcome


@push_handler
def process_dead_letter(deps: Deps, envelope: Any) -> str:
    """A message that could not be delivered: the run it belongs to fails with the reason."""
    msg = decode_push(envelope)
    data = msg.data if isinstance(msg.data, dict) else {}
    run_id = data.get("run_id") or msg.attributes.get("run_id")
    if not run_id:
        return f"no-op: dead letter {msg.message_id} names no run"
    if not is_valid_id(run_id):
        return f"no-op: dead letter {msg.message_id} names no valid run id ({str(run_id)[:80]!r})"
    source = msg.attributes.get("CloudPubSubDeadLetterSourceSubscription", "a subscription")
    stage = data.get("stage") or msg.attributes.get("stage") or ""
    stage = stage if is_valid_id(stage) else ""
    reason = f"message could not be delivered to {source} after repeated attempts"
    if deps.store.fail_run(run_id, stage, reason):
        finish_report(deps, deps.store.get_run(run_id), "FAILED")
        log.error("run %s failed: %s", run_id, reason, extra={"fields": {"run_id": run_id, "stage": stage}})
        return f"run {run_id} failed: {reason}"
    return f"no-op: run {run_id} had already ended"


def blueprint(stages: list[str] | None = None, *, runs: bool = True, job_events: bool = True,
              dead_letter: bool = True) -> Blueprint:
    bp = Blueprint("push", __name__)
    handlers = {s: _step_handler(s) for s in (stages if stages is not None else all_stages())}

    def body() -> Any:
        deps = deps_of(current_app)
        verify_push(deps.config)
        return deps, json_body("push body")

    if runs:
        @bp.post("/push/runs")
        def push_runs():  # noqa: ANN202
            return process_run_request(*body())

    if handlers:
        @bp.post("/push/step/<stage>")
        def push_step(stage: str):  # noqa: ANN202
            if stage not in handlers:
                raise ApiError(404, f"this launcher does not serve stage {stage!r}")
            return handlers[stage](*body())

    if job_events:
        @bp.post("/push/job-events")
        def push_job_events():  # noqa: ANN202
            return process_job_event(*body())

    if dead_letter:
        @bp.post("/push/dead-letter")
        def push_dead_letter():  # noqa: ANN202
            return process_dead_letter(*body())

    return bp


__all__ = ["blueprint", "process_job_event", "process_run_request", "process_dead_letter", "BadMessage"]
