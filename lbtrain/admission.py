"""Admission: at most N active runs per deployment and per model type, and a monthly budget of
node-hours (docs/architecture.md §7.9).

One document per deployment, `admission/{deployment}`, holds the admitted runs (`active`: run id →
model type), the runs waiting for a slot in arrival order (`queue`) and the node-hours of finished
jobs per calendar month (`node_hours`). Every change to it is one Firestore transaction:

- `start` (a run was created, retried or released by its rule): the run joins the queue, then a
  round admits what the limits allow, in arrival order; a waiting run keeps `admission: queued` and
  a `waiting` reason ("3 runs ahead"), which the launcher's claim refuses to launch.
- `finished` (from `completion.finish_report`, which every way a run ends goes through): its slot is
  released, its jobs' node-hours are added to the month, and a round admits the next runs.
- `sweep` (the reconciler): enters runs whose entry was lost, releases runs that ended without
  leaving, and runs a round (a new month, a raised limit, a lost publish).

Whoever commits a round publishes the first pending step of each run it admitted. Nothing waits or
polls: a queued run starts when a transaction that frees a slot admits it.

Without any limit configured (the default) admission is off: runs start as they always did, and
nothing touches the admission document, which would otherwise be one more contended document per
run start and end.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lbtrain import domain as d
from lbtrain.config import Config, per_type_limits
from lbtrain.deps import Deps

log = logging.getLogger("lbtrain.admission")

ADMISSION = "admission"
# Every lbtrain CustomJob has one worker pool with one replica: a job's node-hours are its duration.
MACHINES_PER_JOB = 1
# A round rewrites the `waiting` reason of at most this many queued runs (a transaction writes ≤ 500
# documents); runs further back keep an older count until they move up.
MAX_REASON_UPDATES = 200
CREATING = "creating the Labelbox model run"  # lbtrain.adapters.trigger_store.CREATING


@dataclass(frozen=True)
class Limits:
    max_active: int = 0  # 0: no limit
    per_type: Mapping[str, int] = field(default_factory=dict)  # model type or "*" → limit (0: none)
    monthly_node_hours: float = 0.0  # 0: no budget

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(config.max_active_runs, per_type_limits(config.max_active_runs_per_type),
                   config.monthly_node_hours)

    @property
    def enabled(self) -> bool:
        return bool(self.max_active or any(self.per_type.values()) or self.monthly_node_hours)

    def type_limit(self, model_type: str) -> int:
        return int(self.per_type.get(model_type, self.per_type.get("*", 0)))


def enabled(config: Config) -> bool:
    return Limits.from_config(config).enabled


def month_of(at: datetime) -> str:
    return at.strftime("%Y-%m")


@dataclass
class Plan:
    admitted: list[str]
    waiting: dict[str, str]  # run id → reason, in queue order


def _runs(n: int) -> str:
    return f"{n} run{'' if n == 1 else 's'} ahead"


def plan(active: Mapping[str, str], queue: Sequence[Mapping[str, Any]], limits: Limits, used_hours: float,
         month: str) -> Plan:
    """Which queued runs take a slot now, in arrival order, and why the others wait. A run blocked only
    by its model type's limit does not hold back later runs of other types."""
    total, by_type = len(active), Counter(active.values())
    admitted: list[str] = []
    waiting: dict[str, str] = {}
    over_budget = limits.monthly_node_hours > 0 and used_hours >= limits.monthly_node_hours
    for entry in queue:
        run_id, model_type = entry["run_id"], entry["model_type"]
        ahead = _runs(len(waiting))
        type_limit = limits.type_limit(model_type)
        if over_budget:
            waiting[run_id] = (f"waiting for the monthly budget: {used_hours:.1f} of {limits.monthly_node_hours:g} "
                               f"node-hours used in {month} ({ahead})")
        elif limits.max_active and total >= limits.max_active:
            waiting[run_id] = (f"waiting for a slot: {ahead} ({total} of {limits.max_active} runs active in the "
                               "deployment)")
        elif type_limit and by_type[model_type] >= type_limit:
            waiting[run_id] = (f"waiting for a slot: {ahead} ({by_type[model_type]} of {type_limit} {model_type} "
                               "runs active)")
        else:
            admitted.append(run_id)
            total += 1
            by_type[model_type] += 1
    return Plan(admitted, waiting)


def node_hours(steps: Sequence[Mapping[str, Any]]) -> float:
    """Node-hours of a run's jobs, every attempt's (from when its job was recorded to when it ended)."""
    total = 0.0
    for step in steps:
        for attempt in (*step.get("attempts", []), step):
            start, end = attempt.get("started_at"), attempt.get("ended_at")
            if attempt.get("job") and start is not None and end is not None and end > start:
                total += (end - start).total_seconds() / 3600 * MACHINES_PER_JOB
    return total


def empty_doc() -> dict[str, Any]:
    return {"active": {}, "queue": [], "node_hours": {}}


class AdmissionStore:
    """The admission document's transactions; the store's client and retry rules."""

    def __init__(self, store: Any, deployment: str, limits: Limits):
        self.store = store
        self.db = store.db
        self.ref = self.db.collection(ADMISSION).document(deployment)
        self.limits = limits

    def get(self) -> dict[str, Any]:
        snap = self.ref.get()
        return {**empty_doc(), **snap.to_dict()} if snap.exists else empty_doc()

    def _read(self, t: Any) -> dict[str, Any]:
        snap = self.ref.get(transaction=t)
        doc = {**empty_doc(), **snap.to_dict()} if snap.exists else empty_doc()
        return doc  # fresh containers: to_dict() builds new ones on every call

    def _round(self, t: Any, doc: dict[str, Any], at: datetime) -> list[str]:
        """Admit what the limits allow (blind writes to the runs concerned); the admitted run ids."""
        month = month_of(at)
        p = plan(doc["active"], doc["queue"], self.limits, float(doc["node_hours"].get(month, 0.0)), month)
        entries = {e["run_id"]: e for e in doc["queue"]}
        for run_id in p.admitted:
            entry = entries[run_id]
            doc["active"][run_id] = entry["model_type"]
            t.update(self.store._run_ref(run_id), {
                "admission": d.ADMISSION_ADMITTED, "admitted_at": at, "updated_at": at,
                "waiting": CREATING if entry.get("rule") else None})
        queue = []
        for i, entry in enumerate(e for e in doc["queue"] if e["run_id"] not in doc["active"]):
            reason = p.waiting[entry["run_id"]]
            if entry.get("reason") != reason and i < MAX_REASON_UPDATES:
                t.update(self.store._run_ref(entry["run_id"]), {"waiting": reason})
                entry = {**entry, "reason": reason}
            queue.append(entry)
        doc["queue"] = queue
        doc["updated_at"] = at
        t.set(self.ref, doc)
        self.store._count(1 + len(p.admitted))
        return p.admitted

    def enter(self, run_id: str) -> tuple[str, list[str]]:
        """The run joins the queue (once) and a round runs: (its outcome, every run admitted)."""
        from google.cloud import firestore

        run_ref = self.store._run_ref(run_id)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> tuple[str, list[str]]:
            at = d.now()
            doc = self._read(t)
            snap = run_ref.get(transaction=t)
            if not snap.exists:
                return "unknown run", []
            run = snap.to_dict()
            if run_id in doc["active"]:  # already holds a slot (e.g. retried before its release was seen)
                if run.get("admission") != d.ADMISSION_ADMITTED and run["status"] in d.ACTIVE_RUN_STATUSES:
                    t.update(run_ref, {"admission": d.ADMISSION_ADMITTED, "admitted_at": at, "updated_at": at,
                                       "waiting": None if run.get("model_run_id") else CREATING})
                return "admitted", [run_id]
            if run["status"] not in (d.QUEUED, d.RUNNING) or d.is_held(run):
                return f"not admissible (run {run['status']})", []
            if all(e["run_id"] != run_id for e in doc["queue"]):
                doc["queue"].append({"run_id": run_id, "model_type": run["model_type"], "at": at,
                                     "rule": not run.get("model_run_id")})
            admitted = self._round(t, doc, at)
            return ("admitted" if run_id in admitted else "queued"), admitted

        return self.store._run(txn)

    def leave(self, run_id: str) -> list[str]:
        """An ended run gives its slot (or queue place) back and its node-hours are counted; a round runs.
        A no-op for a run that is not in the document or has not ended (a retried run is back in the queue)."""
        from google.cloud import firestore

        run_ref = self.store._run_ref(run_id)
        steps_ref = run_ref.collection("steps")

        @firestore.transactional
        def txn(t: firestore.Transaction) -> list[str]:
            at = d.now()
            doc = self._read(t)
            in_queue = any(e["run_id"] == run_id for e in doc["queue"])
            if run_id not in doc["active"] and not in_queue:
                return []
            snap = run_ref.get(transaction=t)
            run = snap.to_dict() if snap.exists else None
            if run is not None and run["status"] not in d.TERMINAL_RUN_STATUSES:
                return []
            if run is not None and run_id in doc["active"]:
                hours = node_hours([s.to_dict() for s in steps_ref.get(transaction=t)])
                delta = hours - float(run.get("node_hours") or 0.0)
                if delta > 0:
                    month = month_of(at)
                    doc["node_hours"][month] = float(doc["node_hours"].get(month, 0.0)) + delta
                    t.update(run_ref, {"node_hours": hours})
            if run is not None and run.get("waiting"):  # an ended run waits for nothing (the dashboard shows it)
                t.update(run_ref, {"waiting": None})
            doc["active"].pop(run_id, None)
            doc["queue"] = [e for e in doc["queue"] if e["run_id"] != run_id]
            return self._round(t, doc, at)

        return self.store._run(txn)

    def admit_waiting(self) -> list[str]:
        """A round without an arrival or a departure (the reconciler: a new month, changed limits)."""
        from google.cloud import firestore

        @firestore.transactional
        def txn(t: firestore.Transaction) -> list[str]:
            doc = self._read(t)
            if not doc["queue"]:
                return []
            return self._round(t, doc, d.now())

        return self.store._run(txn)


def _store(deps: Deps) -> AdmissionStore:
    return AdmissionStore(deps.store, deps.config.deployment_name, Limits.from_config(deps.config))


def _publish_admitted(deps: Deps, run_ids: Sequence[str]) -> None:
    """Offer each admitted run's current step to its launcher (duplicates are no-ops at the claim)."""
    from lbtrain.intake import redrive_pending

    for run_id in run_ids:
        try:
            redrive_pending(deps, run_id)
        except Exception as exc:  # noqa: BLE001 - the reconciler re-drives a step whose publish was lost
            log.warning("admitted run %s: publishing its step failed: %s", run_id, exc,
                        extra={"fields": {"run_id": run_id}})
        else:
            log.info("run %s admitted", run_id, extra={"fields": {"run_id": run_id}})


def start(deps: Deps, run_id: str) -> str:
    """A run that may start (created, retried, released): admitted now (its step published) or queued."""
    outcome, admitted = _store(deps).enter(run_id)
    _publish_admitted(deps, admitted)
    if outcome == "queued":
        log.info("run %s queued: %s", run_id, deps.store.get_run(run_id).get("waiting"),
                 extra={"fields": {"run_id": run_id}})
    return outcome


def finished(deps: Deps, run: Mapping[str, Any]) -> list[str]:
    """A run ended (completion.finish_report): release its slot and start the next runs."""
    if not run.get("admission"):  # started without admission: holds no slot
        return []
    admitted = _store(deps).leave(run["run_id"])
    _publish_admitted(deps, admitted)
    return admitted


def sweep(deps: Deps) -> list[str]:
    """Reconciler part: repair lost entries and releases, then admit what the limits allow."""
    store = _store(deps)
    doc = store.get()
    if not store.limits.enabled and not doc["queue"] and not doc["active"]:
        return []
    actions: list[str] = []
    known = set(doc["active"]) | {e["run_id"] for e in doc["queue"]}
    for run in deps.store.active_runs():
        if run.get("admission") == d.ADMISSION_QUEUED and run["run_id"] not in known and not d.is_held(run):
            outcome = start(deps, run["run_id"])
            actions.append(f"{run['run_id']}: entered admission ({outcome})")
    for run_id in sorted(known):
        try:
            run = deps.store.get_run(run_id)
        except Exception:  # noqa: BLE001 - NotFound: a run that no longer exists gives its slot back
            run = {"run_id": run_id, "status": d.CANCELLED}
        if run["status"] in d.TERMINAL_RUN_STATUSES:
            admitted = store.leave(run_id)
            _publish_admitted(deps, admitted)
            actions.append(f"{run_id}: released its admission slot ({run['status']})"
                           + (f"; admitted {', '.join(admitted)}" if admitted else ""))
    admitted = store.admit_waiting()
    _publish_admitted(deps, admitted)
    actions.extend(f"{run_id}: admitted" for run_id in admitted)
    return actions
