"""Retraining rules and their label counters in Firestore (`triggers/{project_id}`), one transaction each.

A rule counts distinct labels changed since its last run: each label gets a marker
`triggers/{project_id}/labels/{key}` stamped with the rule's `epoch`; a marker from an earlier epoch
counts again. Deliveries are deduped through the same `deliveries/` collection as the model-run
webhooks, inside the counting transaction, so a redelivered or concurrent event counts once.

When the count reaches the rule's threshold, a *held* run is created: status QUEUED, no model run
yet, `waiting` saying why ("queued behind run X", "minimum interval …"). At most one held run per
rule. It is released when the rule has no active run and the minimum interval has passed: releasing
starts a new epoch and gives the run its first step, `modelrun`, whose job creates the Labelbox model
run; that job's completion gives the run its model run id and moves it on to the pipeline's stages.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore

from lbtrain import domain as d
from lbtrain import pipelines, prelabel
from lbtrain.adapters import firestore_txn
from lbtrain.adapters.firestore_store import DELIVERIES, DELIVERY_TTL, FirestoreStore, delivery_doc_id
from lbtrain.errors import NotFound

TRIGGERS, LABELS, SHARDS = "triggers", "labels", "shards"
SHARD_COUNT = 8
CREATING = "creating the Labelbox model run"
MODELRUN_INDEX = -1  # the modelrun step sorts before the pipeline's stages (0, 1, …)
RULE_FIELDS = ("model_type", "model_id", "min_labels", "min_interval_seconds", "params", "enabled")


@dataclass
class LabelEventResult:
    outcome: str  # duplicate | no rule | disabled | counted | already counted | held
    pending: int = 0
    run_id: str = ""  # the rule's held run, when there is one
    waiting: str = ""
    min_labels: int | None = None  # the rule's threshold (None: no rule)


def label_doc_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def due_at(rule: dict[str, Any]) -> datetime | None:
    """When the minimum interval since the last release ends (None: no limit now)."""
    last = rule.get("last_fired_at")
    interval = float(rule.get("min_interval_seconds") or 0)
    return last + timedelta(seconds=interval) if last is not None and interval > 0 else None


def waiting_reason(rule: dict[str, Any], at: datetime) -> str:
    if rule.get("active_run_id"):
        return f"queued behind run {rule['active_run_id']}"
    due = due_at(rule)
    if due is not None and at < due:
        return f"waiting for the minimum interval between runs (until {due.strftime('%Y-%m-%dT%H:%M:%SZ')})"
    return "starting"


def rule_prelabel(params: dict[str, Any], trigger: dict[str, Any]) -> dict[str, Any] | None:
    """A rule run's prelabel settings: on by default (the rule's project), off with params.prelabel false."""
    try:
        return prelabel.resolve(params, trigger)
    except prelabel.PrelabelError:  # checked when the rule was set (lbtrain/triggers.py); older rules: no step
        return None


class TriggerStore:
    def __init__(self, store: FirestoreStore):
        self.store = store
        self.db = store.db

    def _ref(self, project_id: str):
        return self.db.collection(TRIGGERS).document(project_id)

    # -- rules ----------------------------------------------------------------------------------
    def get_rule(self, project_id: str) -> dict[str, Any] | None:
        """The rule with `pending`: labels counted since its last run started."""
        snap = self._ref(project_id).get()
        if not snap.exists:
            return None
        rule = snap.to_dict()
        return {**rule, "pending": self.pending(project_id, rule["epoch"])}

    def list_rules(self) -> list[dict[str, Any]]:
        rules = [s.to_dict() for s in self.db.collection(TRIGGERS).stream()]
        return sorted(({**r, "pending": self.pending(r["project_id"], r["epoch"])} for r in rules),
                      key=lambda r: r["project_id"])

    def put_rule(self, project_id: str, rule: dict[str, Any]) -> dict[str, Any]:
        """Create or change a rule; counters and the run bookkeeping are kept."""
        ref = self._ref(project_id)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> dict[str, Any]:
            at = d.now()
            snap = ref.get(transaction=t)
            current = snap.to_dict() if snap.exists else {
                "project_id": project_id, "epoch": 1, "active_run_id": None, "queued_run_id": None,
                "last_run_id": None, "last_fired_at": None, "created_at": at}
            new = {**current, **{k: rule[k] for k in RULE_FIELDS if k in rule}, "updated_at": at}
            new.pop("pending", None)
            t.set(ref, new)
            return new

        saved = self.store._run(txn)
        return {**saved, "pending": self.pending(project_id, saved["epoch"])}

    def delete_rule(self, project_id: str) -> bool:
        """Runs already started keep going; a held run stays held until cancelled."""
        ref = self._ref(project_id)
        if not ref.get().exists:
            return False
        for sub in (LABELS, SHARDS):
            for doc in ref.collection(sub).list_documents(page_size=500):
                doc.delete()
        ref.delete()
        return True

    # -- label events ---------------------------------------------------------------------------
    def pending(self, project_id: str, epoch: int, transaction: firestore.Transaction | None = None) -> int:
        """Distinct labels counted in `epoch`: the sum of its counter shards. Outside a transaction the
        server adds them up (one number comes back, not SHARD_COUNT documents to decode)."""
        shards = self._ref(project_id).collection(SHARDS).where(filter=firestore.FieldFilter("epoch", "==", epoch))
        if transaction is None:
            (row,) = shards.sum("count", alias="n").get()
            return int(row[0].value or 0)
        return sum(int(s.get("count") or 0) for s in shards.stream(transaction=transaction))

    def record_label_event(self, project_id: str, label_key: str, delivery_key: str, trigger: dict[str, Any],
                           new_run_id: str) -> LabelEventResult:
        """Count a label once per epoch, then hold a follow-up run if the threshold is reached.

        The counting transaction reads the rule (shared with other deliveries) and writes only
        the label's marker, the delivery record and a blind increment of one of SHARD_COUNT
        counter shards, so concurrent deliveries for one project rarely collide. The counter
        only grows within an epoch, so a sum read after the commit that reaches the threshold
        stays true; the hold transaction checks the epoch and that no run is held yet.
        """
        ref = self._ref(project_id)
        marker_ref = ref.collection(LABELS).document(label_doc_id(label_key))
        delivery_ref = self.db.collection(DELIVERIES).document(delivery_doc_id(delivery_key))
        shard = random.randrange(SHARD_COUNT)

        def count(t: firestore_txn.LazyTransaction) -> tuple[str, dict[str, Any] | None, str]:
            at = d.now()
            # The delivery, the rule and the label's marker in one round trip, which also begins the
            # transaction (lbtrain/adapters/firestore_txn.py).
            seen, snap, marker = firestore_txn.get_ordered(t, [delivery_ref, ref, marker_ref])
            rule = snap.to_dict() if snap.exists else None
            if seen.exists:
                return "duplicate", rule, seen.get("run_id") or ""
            delivery = {"run_id": None, "at": at, "expire_at": at + DELIVERY_TTL, "kind": "label"}
            t.set(delivery_ref, delivery)
            if rule is None:
                return "no rule", None, ""
            if not rule.get("enabled", True):
                return "disabled", rule, ""
            if marker.exists and marker.get("epoch") == rule["epoch"]:
                return "already counted", rule, ""
            t.set(marker_ref, {"key": label_key, "epoch": rule["epoch"], "at": at, "topic": trigger.get("event", "")})
            t.set(ref.collection(SHARDS).document(f"e{rule['epoch']}-{shard}"),
                  {"epoch": rule["epoch"], "count": firestore.Increment(1)}, merge=True)
            return "counted", rule, ""

        outcome, rule, run_id = firestore_txn.run(self.db, count)
        threshold = int(rule["min_labels"]) if rule else None
        if rule is None or outcome == "duplicate":
            return LabelEventResult(outcome, run_id=run_id, min_labels=threshold)
        pending = self.pending(project_id, rule["epoch"])
        result = LabelEventResult(outcome, pending, rule.get("queued_run_id") or "", min_labels=threshold)
        if pending < int(rule["min_labels"]) or rule.get("queued_run_id") or not rule.get("enabled", True):
            return result
        held = self._hold(project_id, rule["epoch"], pending, trigger, new_run_id)
        return LabelEventResult("held", pending, held[0], held[1], threshold) if held else result

    def _hold(self, project_id: str, epoch: int, pending: int, trigger: dict[str, Any],
              run_id: str) -> tuple[str, str] | None:
        """Create the rule's held run unless one exists or the epoch moved on: (run id, waiting)."""
        ref = self._ref(project_id)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> tuple[str, str] | None:
            at = d.now()
            snap = ref.get(transaction=t)
            if not snap.exists:
                return None
            rule = snap.to_dict()
            if rule["epoch"] != epoch or rule.get("queued_run_id"):
                return None
            waiting = waiting_reason(rule, at)
            run_trigger = {**trigger, "project_id": project_id, "labels": pending}
            params = dict(rule.get("params") or {})
            settings = rule_prelabel(params, run_trigger)
            stages = prelabel.stages_for(pipelines.get(rule["model_type"]).stages, settings)
            run = d.initial_run(run_id, rule["model_type"], "", rule.get("model_id") or "",
                                prelabel.with_settings(params, settings), run_trigger, stages[0], at, stages=stages)
            # Its steps are written on their first change (FirestoreStore.stored_step).
            t.create(self.store._run_ref(run_id), {**run, "waiting": waiting})
            t.update(ref, {"queued_run_id": run_id, "updated_at": at})
            return run_id, waiting

        return self.store._run(txn)

    # -- releasing the held run ------------------------------------------------------------------
    def claim_release(self, project_id: str, at: datetime | None = None, admission_hold: bool = False) -> str | None:
        """Make the held run the rule's active run if nothing blocks it; its id, else None. With
        `admission_hold` the released run waits for admission (lbtrain/admission.py) before its modelrun step."""
        ref = self._ref(project_id)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> str | None:
            now = at or d.now()
            snap = ref.get(transaction=t)
            if not snap.exists:
                return None
            rule = snap.to_dict()
            run_id = rule.get("queued_run_id")
            if not run_id:
                return None
            run_ref = self.store._run_ref(run_id)
            run_snap = run_ref.get(transaction=t)
            if not run_snap.exists or run_snap.get("status") != d.QUEUED:  # cancelled while held
                t.update(ref, {"queued_run_id": None, "updated_at": now})
                return None
            reason = waiting_reason(rule, now)
            if reason != "starting":
                if run_snap.get("waiting") != reason:
                    t.update(run_ref, {"waiting": reason, "updated_at": now})
                return None
            # The epoch closes here: every label it counted is in the model run created next.
            labels = self.pending(project_id, rule["epoch"], transaction=t)
            step_ref = self.store._step_ref(run_id, d.MODELRUN)
            step_snap = step_ref.get(transaction=t)
            t.update(ref, {"active_run_id": run_id, "queued_run_id": None, "epoch": rule["epoch"] + 1,
                           "last_fired_at": now, "last_run_id": run_id, "updated_at": now})
            t.update(run_ref, {"waiting": CREATING, "released_at": now, "stage": d.MODELRUN, "updated_at": now,
                               "trigger.labels": labels,
                               **({"admission": d.ADMISSION_QUEUED} if admission_hold else {})})
            if not step_snap.exists:
                t.set(step_ref, d.initial_step(d.MODELRUN, MODELRUN_INDEX, now))
            return run_id

        return self.store._run(txn)

    def prepare_release(self, run_id: str, *, relaunch: bool = False, at: datetime | None = None) -> int | None:
        """The attempt of a released run's modelrun step to offer the launcher, or None (nothing to launch).

        Repairs what a crash or an older version left: a released run without `released_at` or without
        the modelrun step gets them. With `relaunch` (the reconciler), a FAILED modelrun step starts
        attempt + 1, its earlier attempt kept in the step's history. A step already launching, running
        or done is left alone: the launcher's claim lets one job per attempt exist.
        """
        run_ref, step_ref = self.store._run_ref(run_id), self.store._step_ref(run_id, d.MODELRUN)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> int | None:
            now = at or d.now()
            run_snap = run_ref.get(transaction=t)
            if not run_snap.exists:
                return None
            run = run_snap.to_dict()
            if run["status"] not in (d.QUEUED, d.RUNNING) or run.get("model_run_id"):
                return None
            if not run.get("released_at"):
                project_id = (run.get("trigger") or {}).get("project_id") or ""
                rule = self._ref(project_id).get(transaction=t) if project_id else None
                if rule is None or not rule.exists or rule.get("active_run_id") != run_id:
                    return None  # still held: released by claim_release only
            step_snap = step_ref.get(transaction=t)
            run_update: dict[str, Any] = {}
            if not run.get("released_at"):
                run_update.update(released_at=now, stage=d.MODELRUN)
            if not step_snap.exists:
                step = d.initial_step(d.MODELRUN, MODELRUN_INDEX, now)
                t.set(step_ref, step)
                run_update.update(stage=d.MODELRUN, waiting=CREATING)
            else:
                step = step_snap.to_dict()
                if relaunch and step["state"] == d.FAILED:
                    update = {"state": d.PENDING, "attempt": step["attempt"] + 1, "job": None, "launched_at": None,
                              "started_at": None, "ended_at": None, "lease_until": None, "error": None,
                              "outputs_uri": None, "metrics": {}, "updated_at": now,
                              "attempts": [*step.get("attempts", []), d.history_entry(step)]}
                    t.update(step_ref, update)
                    step = {**step, **update}
                    run_update.update(waiting=f"{CREATING} (attempt {step['attempt']})")
            if run_update:
                t.update(run_ref, {**run_update, "updated_at": now})
            return int(step["attempt"]) if step["state"] in (d.PENDING, d.LAUNCHING) else None

        return self.store._run(txn)

    def run_finished(self, project_id: str, run_id: str) -> bool:
        """The rule's active (or held) run ended: the rule is free again. True if it changed."""
        ref = self._ref(project_id)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> bool:
            snap = ref.get(transaction=t)
            if not snap.exists:
                return False
            rule = snap.to_dict()
            update: dict[str, Any] = {}
            if rule.get("active_run_id") == run_id:
                update["active_run_id"] = None
            if rule.get("queued_run_id") == run_id:
                update["queued_run_id"] = None
            if update:
                t.update(ref, {**update, "updated_at": d.now()})
            return bool(update)

        return self.store._run(txn)

    def stalled_releases(self, older_than: timedelta, at: datetime | None = None) -> list[dict[str, Any]]:
        """Active runs of rules that were released but wait for their model run with nothing running:
        the modelrun job failed, or its step message was lost."""
        now = at or d.now()
        out = []
        for rule in self.list_rules():
            run_id = rule.get("active_run_id")
            if not run_id:
                continue
            try:
                run = self.store.get_run(run_id)
            except NotFound:
                continue
            if run["status"] == d.QUEUED and not run.get("model_run_id") and now - run["updated_at"] > older_than \
                    and run.get("admission") != d.ADMISSION_QUEUED:  # waiting for admission, not stalled
                out.append(run)
        return out
