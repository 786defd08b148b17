"""The safety net: re-drives steps whose message or completion event was lost (docs/architecture.md §1).

Runs every few minutes (Cloud Scheduler → functions/reconciler; a loop in `lbtrain dev`).
Everything it does is something a handler would have done, so running it twice is harmless.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from lbtrain import domain as d
from lbtrain.completion import handle_job_event
from lbtrain.deps import Deps
from lbtrain.intake import publish_step
from lbtrain.messages import JobEvent

log = logging.getLogger("lbtrain.reconcile")


def reconcile_once(deps: Deps, at: datetime | None = None) -> list[str]:
    at = at or d.now()
    stale = timedelta(seconds=deps.config.stale_after_seconds)
    actions: list[str] = []
    for run in deps.store.active_runs():
        run_id = run["run_id"]
        if d.is_held(run) or run.get("admission") == d.ADMISSION_QUEUED:
            continue  # a rule's held run (triggers.sweep below) or one waiting for admission (admission.sweep)
        try:
            step = deps.store.get_step(run_id, run["stage"])
            old = step.get("updated_at") is None or at - step["updated_at"] > stale
            job = step.get("job") or {}
            if step["state"] == d.RUNNING and job:
                status = deps.backend.get_status(job["id"])
                if status.terminal and old:
                    result = handle_job_event(deps, JobEvent(job_id=job["id"], state=status.state, run_id=run_id,
                                                             stage=step["stage"], attempt=step["attempt"]))
                    actions.append(f"{run_id}: completed lost event: {result}")
                elif run["status"] == d.CANCELLING and not status.terminal:
                    deps.backend.cancel(job["id"])
                    actions.append(f"{run_id}: cancel re-sent to {job['id']}")
            elif step["state"] == d.PENDING and step.get("not_before") and run["status"] != d.CANCELLING:
                # An automatic retry (§7.8): offered once its back-off is over, not before.
                if step["not_before"] <= at:
                    publish_step(deps, run_id, step["stage"], step["attempt"])
                    actions.append(f"{run_id}: retry due: re-drove {step['stage']} a{step['attempt']}")
            elif step["state"] in (d.PENDING, d.LAUNCHING) and old and run["status"] != d.CANCELLING:
                publish_step(deps, run_id, step["stage"], step["attempt"])
                actions.append(f"{run_id}: re-drove {step['stage']} a{step['attempt']}")
        except Exception as exc:  # noqa: BLE001 - one bad run must not stop the sweep
            log.exception("reconciling run %s failed: %s", run_id, exc, extra={"fields": {"run_id": run_id}})
            actions.append(f"{run_id}: error {exc}")
    try:
        from lbtrain import triggers

        actions.extend(triggers.sweep(deps, stale, at))
    except Exception as exc:  # noqa: BLE001
        log.exception("retraining rules sweep failed: %s", exc)
        actions.append(f"triggers: error {exc}")
    try:
        from lbtrain import admission

        actions.extend(admission.sweep(deps))
    except Exception as exc:  # noqa: BLE001
        log.exception("admission sweep failed: %s", exc)
        actions.append(f"admission: error {exc}")
    for action in actions:
        log.info("reconcile: %s", action)
    return actions
