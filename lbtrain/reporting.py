"""Reporting status back to Labelbox. Best effort: a Labelbox outage must not stall the
pipeline; every report is repeated on redelivery and by the reconciler's re-drives.

Each report is also kept on the run document (`labelbox_statuses`, newest last, bounded) so the
dashboard can show the history in the cloud, where Labelbox is not ours to read back. An entry's
`reported` is true (delivered), false (not delivered) or null: written before it was sent, in the
transaction that created the run, and not marked since because the send did not fail."""

from __future__ import annotations

import logging
from typing import Any

from lbtrain import domain as d
from lbtrain.adapters.labelbox import clip_error
from lbtrain.deps import Deps

log = logging.getLogger("lbtrain.reporting")

HISTORY_LIMIT = 50  # entries kept on the run document: a few per attempt, far below the 1 MiB doc limit


def report_status(deps: Deps, model_run_id: str, status: str, *, run_id: str, error: str | None = None,
                  metadata: dict[str, str] | None = None) -> bool:
    """Tell Labelbox, then append the report (delivered or not) to the run's history."""
    entry = status_entry(status, error=error, metadata=metadata)
    reported = send(deps, model_run_id, entry, run_id=run_id)
    if run_id:
        record_history(deps, run_id, {**entry, "reported": reported})
    return reported


def status_entry(status: str, *, error: str | None = None, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """A history entry not yet sent: `reported` None. A new run's first entry is written like this in
    the transaction that creates the run (one write less); only a failed send changes it afterwards."""
    return {"status": status, "error_message": clip_error(error) if error else None, "at": d.now(),
            "reported": None, "metadata": {str(k): str(v) for k, v in (metadata or {}).items()}}


def send(deps: Deps, model_run_id: str, entry: dict[str, Any], *, run_id: str) -> bool:
    """The Labelbox status update for `entry`; False (logged) when it could not be delivered."""
    meta = {**({"lbtrain_run_id": run_id} if run_id else {}), **entry["metadata"]}
    try:
        deps.labelbox.update_status(model_run_id, entry["status"], metadata=meta,
                                    error_message=entry["error_message"])
        return True
    except Exception as exc:  # noqa: BLE001 - reporting must never fail the handler
        log.warning("Labelbox status %s for model run %s not reported: %s", entry["status"], model_run_id, exc,
                    extra={"fields": {"run_id": run_id}})
        return False


def report_recorded(deps: Deps, model_run_id: str, entry: dict[str, Any], *, run_id: str) -> bool:
    """Send an entry the run's document already holds (status_entry): a delivered one stays as written,
    an undelivered one is marked `reported: false` (a write on bad days only)."""
    reported = send(deps, model_run_id, entry, run_id=run_id)
    if not reported:
        record_history(deps, run_id, {**entry, "reported": False})
    return reported


def same_report(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A redelivered handler reports the same status again: like Labelbox, keep one entry."""
    return all(a.get(k) == b.get(k) for k in ("status", "error_message", "metadata"))


def appended(history: list[dict[str, Any]], entry: dict[str, Any],
             limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
    """The history with `entry` added, newest last, at most `limit` long. A repeat of the last
    entry adds nothing (the same list object comes back), except that it settles the last entry's
    delivery: a delivered repeat marks it delivered, an undelivered one marks a not-yet-sent
    (`reported` None) entry undelivered."""
    if history and same_report(history[-1], entry):
        last = history[-1].get("reported")
        got = entry.get("reported")
        if (got and not last) or (got is False and last is None):
            return [*history[:-1], {**history[-1], "reported": bool(got)}]
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
