"""Reporting status back to Labelbox. Best effort: a Labelbox outage must not stall the
pipeline; every report is repeated on redelivery and by the reconciler's re-drives.

Each report is also kept on the run document (`labelbox_statuses`, newest last, bounded) so the
dashboard can show the history in the cloud, where Labelbox is not ours to read back."""

from __future__ import annotations

import logging
from typing import Any

from lbtrain import domain as d
from lbtrain.adapters.labelbox import clip_error
from lbtrain.deps import Deps

log = logging.getLogger("lbtrain.reporting")

HISTORY_LIMIT = 50  # entries kept on the run document: a few per attempt, far below the 1 MiB doc limit


def report_status(deps: Deps, model_run_id: str, status: str, *, run_id: str, error: str | None = None,
                  metadata: dict[str, str] | None = None, first: bool = False) -> bool:
    """`first`: the run was created a moment ago and nothing else reports on it yet (start_run, before
    its first step is offered): its history is this one entry, written without a transaction."""
    meta = {**({"lbtrain_run_id": run_id} if run_id else {}), **(metadata or {})}
    clipped = clip_error(error) if error else None
    try:
        deps.labelbox.update_status(model_run_id, status, metadata=meta, error_message=clipped)
        reported = True
    except Exception as exc:  # noqa: BLE001 - reporting must never fail the handler
        log.warning("Labelbox status %s for model run %s not reported: %s", status, model_run_id, exc,
                    extra={"fields": {"run_id": run_id}})
        reported = False
    if run_id:
        entry = {"status": status, "error_message": clipped, "at": d.now(), "reported": reported,
                 "metadata": {str(k): str(v) for k, v in (metadata or {}).items()}}
        if first:
            record_first(deps, run_id, entry)
        else:
            record_history(deps, run_id, entry)
    return reported


def record_first(deps: Deps, run_id: str, entry: dict[str, Any]) -> None:
    """The first entry of a new run's history: one blind update (1 round trip, not a transaction's 3)."""
    try:
        from lbtrain.adapters.firestore_store import RUNS

        deps.store.db.collection(RUNS).document(run_id).update({"labelbox_statuses": [entry]})
        deps.store.writes += 1
    except Exception as exc:  # noqa: BLE001 - the history is for people; it must not fail the handler
        log.warning("Labelbox status %s not recorded on run %s: %s", entry.get("status"), run_id, exc,
                    extra={"fields": {"run_id": run_id}})


def same_report(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A redelivered handler reports the same status again: like Labelbox, keep one entry."""
    return all(a.get(k) == b.get(k) for k in ("status", "error_message", "metadata"))


def appended(history: list[dict[str, Any]], entry: dict[str, Any],
             limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
    """The history with `entry` added, newest last, at most `limit` long. A repeat of the last
    entry adds nothing (the same list object comes back), except that a delivered repeat marks an
    undelivered entry delivered."""
    if history and same_report(history[-1], entry):
        if entry.get("reported") and not history[-1].get("reported"):
            return [*history[:-1], {**history[-1], "reported": True}]
        return history
    return [*history, entry][-limit:]


def record_history(deps: Deps, run_id: str, entry: dict[str, Any]) -> None:
    """Append to `runs/{run_id}.labelbox_statuses` in a small transaction (bounded list). Best effort."""
    try:
        from google.cloud import firestore

        from lbtrain.adapters.firestore_store import RUNS

        store = deps.store
        ref = store.db.collection(RUNS).document(run_id)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> None:
            snap = ref.get(field_paths=["labelbox_statuses"], transaction=t)
            if not snap.exists:
                return
            history = list((snap.to_dict() or {}).get("labelbox_statuses") or [])
            new = appended(history, entry)
            if new is not history:
                t.update(ref, {"labelbox_statuses": new})
                store.writes += 1

        txn(store.db.transaction(max_attempts=5))
    except Exception as exc:  # noqa: BLE001 - the history is for people; it must not fail the handler
        log.warning("Labelbox status %s not recorded on run %s: %s", entry.get("status"), run_id, exc,
                    extra={"fields": {"run_id": run_id}})
