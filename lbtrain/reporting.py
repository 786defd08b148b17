"""Reporting status back to Labelbox. Best effort: a Labelbox outage must not stall the
pipeline; every report is repeated on redelivery and by the reconciler's re-drives."""

from __future__ import annotations

import logging

from lbtrain.adapters.labelbox import clip_error
from lbtrain.deps import Deps

log = logging.getLogger("lbtrain.reporting")


def report_status(deps: Deps, model_run_id: str, status: str, *, run_id: str, error: str | None = None,
                  metadata: dict[str, str] | None = None) -> bool:
    try:
        meta = {**({"lbtrain_run_id": run_id} if run_id else {}), **(metadata or {})}
        deps.labelbox.update_status(model_run_id, status, metadata=meta,
                                    error_message=clip_error(error) if error else None)
        return True
    except Exception as exc:  # noqa: BLE001 - reporting must never fail the handler
        log.warning("Labelbox status %s for model run %s not reported: %s", status, model_run_id, exc,
                    extra={"fields": {"run_id": run_id}})
        return False
