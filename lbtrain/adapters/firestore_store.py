"""Pipeline state in Firestore (docs/architecture.md §6). Every transition is one transaction: one writer wins
and a duplicate becomes a no-op. One document per run and one per step keeps contention low.

A step's document is written on its first change: a stage of the run's pipeline without one is
PENDING attempt 1 (`stored_step`), and the transaction that first moves it creates it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from lbtrain import domain as d
from lbtrain import pipelines
from lbtrain.adapters import firestore_txn
from lbtrain.domain import JobRef
from lbtrain.errors import Busy, Conflict, NotFound
from lbtrain.prelabel import PRELABEL

# The prelabel job's counts the run document keeps (the dashboard shows them).
PRELABEL_FIELDS = ("project_id", "unlabeled", "predicted", "prelabeled_rows", "prelabels", "prioritised",
                   "imports", "skipped", "failed_rows", "model_deployed")

RUNS, STEPS, DELIVERIES, MODEL_RUNS = "runs", "steps", "deliveries", "model_runs"
DELIVERY_TTL = timedelta(days=7)
LAUNCH_LEASE = timedelta(seconds=30)
Txn = firestore.Transaction | firestore_txn.LazyTransaction  # what the transaction functions write through
ADMISSION_WAITING = "waiting for admission"  # until the admission round (lbtrain/admission.py) says more


@dataclass
class CreateResult:
    run_id: str
    created: bool
    reason: str = ""  # "duplicate delivery" | "active run for model run"


@dataclass
class Claim:
    kind: str  # "claimed" | "reclaim" | "noop" | "not_yet" (an automatic retry before its back-off ended)
    run: dict[str, Any] = field(default_factory=dict)
    step: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    due: Any = None  # "not_yet": when the attempt may launch (its `not_before`)


@dataclass
class LaunchRecord:
    cancel_job: bool  # the run was cancelled while the job was being launched
    duplicate: bool = False


@dataclass
class Completion:
    moved: bool  # this call changed the step
    run: dict[str, Any]
    next_stage: str | None = None  # publish a StepMessage for it
    next_attempt: int = 0
    finished: str | None = None  # run's terminal status if it ended (now or earlier)
    reason: str = ""
    waiting: str = ""  # a failed modelrun step: the run waits (QUEUED) with this reason for a relaunch
    retry_at: Any = None  # a failed attempt will be retried (next_stage, next_attempt) from this time
    machine: str = ""  # the machine the failed attempt ran on


@dataclass
class CancelResult:
    status: str
    job: JobRef | None = None  # a running job the caller must cancel at the backend
    changed: bool = True


def delivery_doc_id(key: str) -> str:
    """Document ids can't hold '/' and are limited in size: hash the dedupe key."""
    return hashlib.sha256(key.encode()).hexdigest()


class FirestoreStore:
    def __init__(self, client: firestore.Client):
        self.db = client
        self.writes = 0  # documents written by this process (bench/handoff.py reports it)

    # -- helpers -----------------------------------------------------------------
    def _run_ref(self, run_id: str):
        return self.db.collection(RUNS).document(run_id)

    def _step_ref(self, run_id: str, stage: str):
        return self._run_ref(run_id).collection(STEPS).document(stage)

    def _run(self, txn):  # noqa: ANN001, ANN202
        """Run a @transactional function; contention that outlasts the retries is transient (503)."""
        try:
            return txn(self.db.transaction(max_attempts=10))
        except ValueError as exc:
            if "Failed to commit transaction" in str(exc):
                raise Busy(f"Firestore contention: {exc}") from exc
            raise

    def _count(self, n: int) -> None:
        self.writes += n

    @staticmethod
    def _get_all(t: Txn, refs: list[Any]) -> list[Any]:
        """The snapshots of `refs` (in their order) read in one round trip."""
        return firestore_txn.get_ordered(t, refs)

    @staticmethod
    def stored_step(run: dict[str, Any], stage: str, snap: Any) -> dict[str, Any] | None:
        """The step as stored, or, for a stage of the run's pipeline that has no document yet,
        PENDING attempt 1 as the run created it; None when the run has no such step."""
        if snap.exists:
            return snap.to_dict()
        stages = pipelines.run_stages(run)
        return d.initial_step(stage, stages.index(stage), run["created_at"]) if stage in stages else None

    @staticmethod
    def _write_step(t: Txn, ref: Any, exists: bool, step: dict[str, Any],
                    update: dict[str, Any]) -> None:
        """Change a step (`step`: as `stored_step` gave it); the first write creates its document."""
        if exists:
            t.update(ref, update)
        else:
            t.set(ref, {**step, **update})

    # -- reads -------------------------------------------------------------------
    def get_run(self, run_id: str) -> dict[str, Any]:
        snap = self._run_ref(run_id).get()
        if not snap.exists:
            raise NotFound(run_id)
        return snap.to_dict()

    def get_steps(self, run_id: str) -> list[dict[str, Any]]:
        """Every step of the run in pipeline order, those not written yet included (PENDING attempt 1)."""
        stored = {s.id: s.to_dict() for s in self._run_ref(run_id).collection(STEPS).stream()}
        snap = self._run_ref(run_id).get()
        return self._all_steps(snap.to_dict() if snap.exists else None, stored)

    @staticmethod
    def _all_steps(run: dict[str, Any] | None, stored: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """The stored steps (by stage) and the run's stages that have none yet, in pipeline order."""
        steps = dict(stored)
        if run is not None:
            for i, stage in enumerate(pipelines.run_stages(run)):
                steps.setdefault(stage, d.initial_step(stage, i, run["created_at"]))
        return sorted(steps.values(), key=lambda s: s["index"])

    def get_step(self, run_id: str, stage: str) -> dict[str, Any]:
        run_ref, step_ref = self._run_ref(run_id), self._step_ref(run_id, stage)
        run_snap, step_snap = self._get_all(self.db, [run_ref, step_ref])
        step = self.stored_step(run_snap.to_dict(), stage, step_snap) if run_snap.exists else None
        if step is None:
            raise NotFound(f"{run_id}/{stage}")
        return step

    def run_for_request(self, delivery_key: str | None, model_run_id: str) -> CreateResult | None:
        """What `create_run` would answer a duplicate, read without a transaction: the run a delivery
        already made, else the model run's active run; None if neither exists (yet)."""
        if delivery_key:
            seen = self.db.collection(DELIVERIES).document(delivery_doc_id(delivery_key)).get()
            if seen.exists and seen.get("run_id"):
                return CreateResult(seen.get("run_id"), False, "duplicate delivery")
        mr = self.db.collection(MODEL_RUNS).document(model_run_id).get()
        active = mr.get("active_run_id") if mr.exists else None
        return CreateResult(active, False, "active run for model run") if active else None

    def list_runs(self, status: str | None = None, model_type: str | None = None,
                  model_run_id: str | None = None, limit: int = 50,
                  before: str | None = None) -> list[dict[str, Any]]:
        """Newest first; `before` is the run_id of the last run of the previous page."""
        q = self.db.collection(RUNS)
        if status:
            q = q.where(filter=firestore.FieldFilter("status", "==", status))
        if model_type:
            q = q.where(filter=firestore.FieldFilter("model_type", "==", model_type))
        if model_run_id:
            q = q.where(filter=firestore.FieldFilter("model_run_id", "==", model_run_id))
        q = q.order_by("created_at", direction=firestore.Query.DESCENDING)
        if before:
            snap = self._run_ref(before).get()
            if snap.exists:
                q = q.start_after(snap)
        return [s.to_dict() for s in q.limit(limit).stream()]

    def active_runs(self) -> list[dict[str, Any]]:
        q = self.db.collection(RUNS).where(
            filter=firestore.FieldFilter("status", "in", list(d.ACTIVE_RUN_STATUSES)))
        return [s.to_dict() for s in q.stream()]

    # -- transitions ---------------------------------------------------------------
    def create_run(self, *, run_id: str, model_type: str, model_run_id: str, model_id: str,
                   params: dict[str, Any], trigger: dict[str, Any], stages: tuple[str, ...],
                   delivery_key: str | None, admission_hold: bool = False,
                   first_status: dict[str, Any] | None = None) -> CreateResult:
        """Create a run, unless the delivery was seen or the model run is busy. Its steps are written on
        their first change (`stored_step`).

        With `admission_hold` (limits configured, lbtrain/admission.py) the run is created waiting for
        admission: nothing launches it until a round admits it. `first_status` is the first entry of its
        Labelbox status history (lbtrain/reporting.py), written with it rather than after it."""
        delivery_ref = self.db.collection(DELIVERIES).document(delivery_doc_id(delivery_key)) if delivery_key else None
        mr_ref = self.db.collection(MODEL_RUNS).document(model_run_id)

        # One transaction, begun by its first read (lbtrain/adapters/firestore_txn.py).
        def txn(t: firestore_txn.LazyTransaction) -> CreateResult:
            at = d.now()
            # One round trip for both reads (a new run's request is dominated by Firestore round trips).
            *seen_snap, mr = self._get_all(t, [mr_ref] if delivery_ref is None else [delivery_ref, mr_ref])
            if seen_snap and seen_snap[0].exists:
                return CreateResult(seen_snap[0].get("run_id"), False, "duplicate delivery")
            active = mr.get("active_run_id") if mr.exists else None
            if active:
                if delivery_ref is not None:
                    t.set(delivery_ref, {"run_id": active, "at": at, "expire_at": at + DELIVERY_TTL})
                    self._count(1)
                return CreateResult(active, False, "active run for model run")
            run = d.initial_run(run_id, model_type, model_run_id, model_id, params, trigger, stages[0], at,
                                stages=stages)
            if admission_hold:
                run.update(admission=d.ADMISSION_QUEUED, waiting=ADMISSION_WAITING)
            if first_status is not None:
                run["labelbox_statuses"] = [first_status]
            # The steps are not written: each is PENDING attempt 1 until its first change (stored_step).
            t.create(self._run_ref(run_id), run)
            t.set(mr_ref, {"active_run_id": run_id, "updated_at": at})
            if delivery_ref is not None:
                t.set(delivery_ref, {"run_id": run_id, "at": at, "expire_at": at + DELIVERY_TTL})
            self._count(2 + (delivery_ref is not None))
            return CreateResult(run_id, True)

        return firestore_txn.run(self.db, txn)

    def claim_step(self, run_id: str, stage: str, attempt: int) -> Claim:
        """PENDING → LAUNCHING before the backend is called (docs/architecture.md §7.2).

        A step already LAUNCHING whose lease expired is handed back as "reclaim": the previous
        launcher may have crashed after submitting, so the caller looks the job up by name first.
        A live lease means another launcher is at work: `Busy`. An automatic retry of this attempt whose
        back-off has not ended is "not_yet" with its `due` time (nothing written; lbtrain/launch.py
        decides whether the message waits for it).
        """
        run_ref, step_ref = self._run_ref(run_id), self._step_ref(run_id, stage)

        def txn(t: firestore_txn.LazyTransaction) -> Claim:
            at = d.now()
            run_snap, step_snap = self._get_all(t, [run_ref, step_ref])
            run = run_snap.to_dict() if run_snap.exists else None
            step = self.stored_step(run, stage, step_snap) if run is not None else None
            if step is None:
                return Claim("noop", reason="unknown run or stage")
            due = step.get("not_before")
            if due and step["state"] == d.PENDING and step["attempt"] == attempt and due > at:
                return Claim("not_yet", run, step, f"attempt {attempt} is due at {due.isoformat()}", due=due)
            if run["status"] not in (d.QUEUED, d.RUNNING):
                return Claim("noop", run, step, f"run is {run['status']}")
            blocker = d.launch_blocker(run, stage)
            if blocker:
                return Claim("noop", run, step, blocker)
            if step["attempt"] != attempt:
                return Claim("noop", run, step, f"stale attempt {attempt} (step is at {step['attempt']})")
            if step["state"] == d.LAUNCHING:
                if step.get("lease_until") and step["lease_until"] > at:
                    raise Busy(f"{run_id}/{stage} is being launched")
                kind = "reclaim"
            elif step["state"] == d.PENDING:
                kind = "claimed"
            else:
                return Claim("noop", run, step, f"step is {step['state']}")
            step_update = {"state": d.LAUNCHING, "lease_until": at + LAUNCH_LEASE, "updated_at": at}
            if kind == "claimed":
                step_update["launched_at"] = at
            self._write_step(t, step_ref, step_snap.exists, step, step_update)
            # The run says RUNNING at this stage already after the first claim (complete_step moves its
            # stage on, a retry sets both): written only when it changes, one write less per stage.
            if run["status"] != d.RUNNING or run.get("stage") != stage:
                t.update(run_ref, {"status": d.RUNNING, "stage": stage, "updated_at": at})
                self._count(1)
            self._count(1)
            return Claim(kind, {**run, "status": d.RUNNING, "stage": stage}, {**step, **step_update})

        return firestore_txn.run(self.db, txn)

    def record_launch(self, run_id: str, stage: str, attempt: int, job: JobRef, machine: str = "") -> LaunchRecord:
        """LAUNCHING → RUNNING with the job. No reverse index from job to step: a job event names its
        step itself, or the backend's labels on the job do (completion.handle_job_event)."""
        run_ref, step_ref = self._run_ref(run_id), self._step_ref(run_id, stage)

        def txn(t: firestore_txn.LazyTransaction) -> LaunchRecord:
            at = d.now()
            run_snap, step_snap = self._get_all(t, [run_ref, step_ref])
            run = run_snap.to_dict()
            step = self.stored_step(run, stage, step_snap)
            if step["attempt"] != attempt:
                return LaunchRecord(cancel_job=False, duplicate=True)
            if step["state"] != d.LAUNCHING:
                same_job = (step.get("job") or {}).get("id") == job.id
                # Cancelled while we launched: the job we just made must go too.
                return LaunchRecord(cancel_job=step["state"] == d.CANCELLED and not same_job,
                                    duplicate=same_job)
            self._write_step(t, step_ref, step_snap.exists, step, {
                "state": d.RUNNING, "job": job.to_dict(), "started_at": at, "lease_until": None, "updated_at": at,
                "machine": machine or None, "not_before": None})
            # The run document is read (a cancel that lands meanwhile retries this transaction) but not
            # written: nothing on it changes when a job starts.
            self._count(1)
            return LaunchRecord(cancel_job=run["status"] == d.CANCELLING)

        return firestore_txn.run(self.db, txn)

    def complete_step(self, run_id: str, stage: str, attempt: int, job_id: str, job_state: str, *,
                      outputs_uri: str | None, metrics: dict[str, Any], error: str,
                      stages: tuple[str, ...], model_run_id: str = "", model_sha256: str = "",
                      failure: dict[str, Any] | None = None, policy: d.RetryPolicy | None = None) -> Completion:
        """Move a RUNNING step with this job to its terminal state and advance or end the run.

        A failed job whose `failure` (lbtrain/failures.py) is retryable, with attempts left under
        `policy`, puts the step back to PENDING as attempt + 1 due at `not_before` (docs/architecture.md
        §7.8); the run stays RUNNING and `next_stage`/`next_attempt` name the retry to publish.

        The modelrun step (a rule run's first) is different: its success gives the run `model_run_id`
        (and the model run's single flight) in the same transaction that moves the run on; its
        failure does not end the run, which waits QUEUED with the reason until the reconciler
        launches another attempt (Labelbox failures are usually passing).
        """
        run_ref, step_ref = self._run_ref(run_id), self._step_ref(run_id, stage)
        mr_ref = self.db.collection(MODEL_RUNS).document(model_run_id) if model_run_id else None
        new_state = d.JOB_STATE_TO_STEP[job_state]
        if stage == d.MODELRUN and new_state == d.SUCCEEDED and mr_ref is None:
            raise ValueError("a succeeded modelrun step needs the model run id")
        idx = stages.index(stage)
        nxt = stages[idx + 1] if idx + 1 < len(stages) else None
        next_ref = self._step_ref(run_id, nxt) if nxt else None

        def txn(t: firestore_txn.LazyTransaction) -> Completion:
            at = d.now()
            # The run, the step and the next one in one round trip.
            run_snap, step_snap, *next_snap = self._get_all(t, [run_ref, step_ref, *([next_ref] if next_ref else [])])
            run = run_snap.to_dict()
            step = self.stored_step(run, stage, step_snap)
            next_step = self.stored_step(run, nxt, next_snap[0]) if next_snap else None
            same_job = (step.get("job") or {}).get("id") == job_id
            if step["attempt"] != attempt or not same_job:
                if step["state"] == d.LAUNCHING and step["attempt"] == attempt:
                    raise Busy(f"{run_id}/{stage} has not recorded its job yet")
                return Completion(False, run, reason="event for another attempt or job")
            if step["state"] != d.RUNNING:
                # Duplicate event: nothing moves, but the downstream effect is re-offered so a
                # publish lost after the first commit is not lost for good.
                if step["state"] == d.SUCCEEDED and next_step and next_step["state"] == d.PENDING \
                        and run["status"] in (d.QUEUED, d.RUNNING):
                    return Completion(False, run, nxt, next_step["attempt"], reason="duplicate")
                finished = run["status"] if run["status"] in d.TERMINAL_RUN_STATUSES else None
                return Completion(False, run, finished=finished, reason="duplicate")

            step_update: dict[str, Any] = {"state": new_state, "ended_at": at, "updated_at": at,
                                           "outputs_uri": outputs_uri, "metrics": metrics,
                                           "error": error or None}
            run_update: dict[str, Any] = {"updated_at": at}
            result = Completion(True, run)
            if run["status"] == d.CANCELLING:
                # Whatever the job's own outcome, a cancelled run ends CANCELLED.
                result.finished = d.CANCELLED
                if new_state == d.SUCCEEDED:
                    run_update[f"outputs.{stage}"] = outputs_uri
            elif stage == d.MODELRUN and new_state == d.FAILED:
                reason = " ".join((error or f"job {job_state.lower()}").split())[:300]
                result.waiting = f"creating the Labelbox model run failed, will retry: {reason}"
                run_update.update({"status": d.QUEUED, "waiting": result.waiting})
            elif new_state == d.SUCCEEDED:
                run_update[f"outputs.{stage}"] = outputs_uri
                if model_sha256:  # the trained model file's digest: later stages load only that file
                    run_update["model_sha256"] = model_sha256
                if stage == d.MODELRUN:
                    run_update.update({"model_run_id": model_run_id, "waiting": None})
                    t.set(mr_ref, {"active_run_id": run_id, "updated_at": at})
                    self._count(1)
                elif stage == "evaluate":
                    run_update["metrics"] = metrics
                elif stage == "deploy":
                    run_update["deployment"] = metrics
                elif stage == "etl" and isinstance(metrics.get("examples"), int):
                    run_update["examples"] = metrics["examples"]  # labels the run learns from (model page)
                elif stage == PRELABEL:
                    run_update["prelabel"] = {k: metrics[k] for k in PRELABEL_FIELDS if k in metrics}
                if nxt:
                    run_update["stage"] = nxt
                    result.next_stage, result.next_attempt = nxt, next_step["attempt"]
                else:
                    result.finished = d.SUCCEEDED
            elif new_state == d.CANCELLED:
                result.finished = d.CANCELLED
            else:
                self._failed(step, stage, error or f"job {job_state.lower()}", failure, policy, at,
                             step_update, run_update, result)
            return self._commit_completion(t, run, step_snap, step, run_ref, step_update, run_update, result, at)

        return firestore_txn.run(self.db, txn)

    def _commit_completion(self, t: Txn, run: dict[str, Any], step_snap: Any,
                           step: dict[str, Any], run_ref: Any, step_update: dict[str, Any],
                           run_update: dict[str, Any], result: Completion, at: Any) -> Completion:
        """The end of complete_step and fail_launch: a finished run lets its model run go; both documents."""
        if result.finished:
            run_update.update({"status": result.finished, "finished_at": at})
            self._release_model_run(t, run, at)
        self._write_step(t, step_snap.reference, step_snap.exists, step, step_update)
        t.update(run_ref, run_update)
        self._count(2)
        result.run = {**run, **{k: v for k, v in run_update.items() if "." not in k}}
        return result

    @staticmethod
    def _failed(step: dict[str, Any], stage: str, error: str, failure: dict[str, Any] | None,
                policy: d.RetryPolicy | None, at: Any, step_update: dict[str, Any], run_update: dict[str, Any],
                result: Completion) -> None:
        """A failed attempt: another one (retryable, attempts left) or the run FAILS naming them all."""
        outcome = d.failed_attempt(step, error, failure, policy or d.RetryPolicy(max_attempts=1), at)
        result.machine = step.get("machine") or ""
        if outcome.retry_at is not None:  # a fresh attempt: nothing of this one stays on the step
            step_update.clear()
        step_update.update({**outcome.step_update, "updated_at": at})
        if outcome.retry_at is not None:
            result.next_stage, result.next_attempt, result.retry_at = stage, step_update["attempt"], outcome.retry_at
            run_update.update({"status": d.RUNNING, "stage": stage})
        elif stage == PRELABEL:
            # The model is deployed: pre-labels that could not be made do not fail the run. The
            # step keeps its error (and every attempt's), the run says so beside its SUCCEEDED.
            result.finished = d.SUCCEEDED
            run_update["prelabel"] = {"error": outcome.message}
        else:
            result.finished = d.FAILED
            run_update["error"] = {"stage": stage, "message": outcome.message}

    def fail_launch(self, run_id: str, stage: str, attempt: int, *, error: str, failure: dict[str, Any],
                    policy: d.RetryPolicy, machine: str = "") -> Completion:
        """A job that could not be created (quota, capacity, Vertex unavailable, a bad request): the
        LAUNCHING step's attempt fails as if its job had, so it is retried or ends the run; the
        launcher never answers 500 forever."""
        run_ref, step_ref = self._run_ref(run_id), self._step_ref(run_id, stage)

        def txn(t: firestore_txn.LazyTransaction) -> Completion:
            at = d.now()
            run_snap, step_snap = self._get_all(t, [run_ref, step_ref])
            run = run_snap.to_dict()
            step = self.stored_step(run, stage, step_snap)
            if step["attempt"] != attempt or step["state"] != d.LAUNCHING:
                return Completion(False, run, reason=f"step is {step['state']} a{step['attempt']}")
            step_update: dict[str, Any] = {}
            run_update: dict[str, Any] = {"updated_at": at}
            result = Completion(True, run)
            self._failed({**step, "machine": machine or step.get("machine")}, stage, error, failure, policy, at,
                         step_update, run_update, result)
            if result.next_stage is None:
                step_update["machine"] = machine or step.get("machine")
            return self._commit_completion(t, run, step_snap, step, run_ref, step_update, run_update, result, at)

        return firestore_txn.run(self.db, txn)

    def _release_model_run(self, t: Txn, run: dict[str, Any], at: Any) -> None:
        """End single flight for the model run. Written blind: only this run can hold it while active."""
        if not run.get("model_run_id"):  # a held rule run that never got its model run
            return
        mr_ref = self.db.collection(MODEL_RUNS).document(run["model_run_id"])
        t.set(mr_ref, {"active_run_id": None, "last_run_id": run["run_id"], "updated_at": at})
        self._count(1)

    def cancel_run(self, run_id: str) -> CancelResult:
        run_ref = self._run_ref(run_id)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> CancelResult:
            at = d.now()
            snap = run_ref.get(transaction=t)
            if not snap.exists:
                raise NotFound(run_id)
            run = snap.to_dict()
            if run["status"] in d.TERMINAL_RUN_STATUSES:
                raise Conflict(f"run {run_id} is already {run['status']}")
            # The run names the step to read: a second round trip (a cancel is rare; the hot path is not here).
            step_ref = self._step_ref(run_id, run["stage"])
            step_snap = step_ref.get(transaction=t)
            step = self.stored_step(run, run["stage"], step_snap)
            if step["state"] == d.RUNNING and step.get("job"):
                if run["status"] != d.CANCELLING:
                    t.update(run_ref, {"status": d.CANCELLING, "updated_at": at})
                    self._count(1)
                return CancelResult(d.CANCELLING, JobRef.from_dict(step["job"]),
                                    changed=run["status"] != d.CANCELLING)
            # Nothing runs (PENDING/LAUNCHING): the run ends now; a launcher that is mid-launch
            # sees the CANCELLED step when it records its job and cancels that job.
            self._write_step(t, step_ref, step_snap.exists, step,
                             {"state": d.CANCELLED, "ended_at": at, "updated_at": at, "lease_until": None})
            t.update(run_ref, {"status": d.CANCELLED, "finished_at": at, "updated_at": at})
            self._count(2)
            self._release_model_run(t, run, at)
            return CancelResult(d.CANCELLED)

        return self._run(txn)

    def retry_run(self, run_id: str, admission_hold: bool = False) -> tuple[str, int]:
        """Restart a FAILED/CANCELLED run from the first stage that did not succeed, attempt + 1.
        With `admission_hold` the run waits for admission again (lbtrain/admission.py)."""
        run_ref = self._run_ref(run_id)
        steps_ref = run_ref.collection(STEPS)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> tuple[str, int]:
            at = d.now()
            snap = run_ref.get(transaction=t)
            if not snap.exists:
                raise NotFound(run_id)
            run = snap.to_dict()
            if run["status"] not in (d.FAILED, d.CANCELLED):
                raise Conflict(f"run {run_id} is {run['status']}; only FAILED or CANCELLED runs can be retried")
            if not run.get("model_run_id"):
                raise Conflict(f"run {run_id} was cancelled before it had a Labelbox model run; nothing to retry")
            mr_ref = self.db.collection(MODEL_RUNS).document(run["model_run_id"])
            mr = mr_ref.get(transaction=t)
            active = mr.get("active_run_id") if mr.exists else None
            if active and active != run_id:
                raise Conflict(f"model run {run['model_run_id']} has an active run {active}")
            stored = {s.id: s.to_dict() for s in steps_ref.get(transaction=t)}
            steps = self._all_steps(run, stored)
            step = d.retry_stage(steps)
            if step is None:
                raise Conflict(f"run {run_id} has no stage left to retry")
            attempt = step["attempt"] + 1
            self._write_step(t, steps_ref.document(step["stage"]), step["stage"] in stored, step, {
                "state": d.PENDING, "attempt": attempt, "job": None, "launched_at": None,
                "started_at": None, "ended_at": None, "lease_until": None, "error": None,
                "outputs_uri": None, "metrics": {}, "updated_at": at, "machine": None, "failure": None,
                "not_before": None, "retry_from": attempt, "machine_index": 0,
                "attempts": [*step.get("attempts", []), d.history_entry(step)],
            })
            # Later stages cancelled along with the run go back to PENDING (a cancelled step is stored).
            for other in steps:
                if other["index"] > step["index"] and other["state"] == d.CANCELLED:
                    t.update(steps_ref.document(other["stage"]), {"state": d.PENDING, "updated_at": at})
                    self._count(1)
            run_update: dict[str, Any] = {"status": d.QUEUED, "stage": step["stage"], "error": None,
                                          "finished_at": None, "updated_at": at}
            if admission_hold:
                run_update.update(admission=d.ADMISSION_QUEUED, waiting=ADMISSION_WAITING)
            t.update(run_ref, run_update)
            t.set(mr_ref, {"active_run_id": run_id, "updated_at": at})
            self._count(3)
            return step["stage"], attempt

        return self._run(txn)

    def fail_run(self, run_id: str, stage: str, message: str) -> bool:
        """Mark an active run FAILED (dead-lettered messages); False if it had already ended."""
        run_ref = self._run_ref(run_id)

        @firestore.transactional
        def txn(t: firestore.Transaction) -> bool:
            at = d.now()
            # With the stage named (a dead letter usually names it), the run and the step in one round trip.
            snap, *step_snaps = self._get_all(t, [run_ref, *([self._step_ref(run_id, stage)] if stage else [])])
            if not snap.exists:
                return False
            run = snap.to_dict()
            if run["status"] in d.TERMINAL_RUN_STATUSES:
                return False
            step_ref = self._step_ref(run_id, stage or run["stage"])
            step_snap = step_snaps[0] if step_snaps else step_ref.get(transaction=t)
            step = self.stored_step(run, stage or run["stage"], step_snap)
            if step is not None and step["state"] not in (d.SUCCEEDED, d.FAILED, d.CANCELLED):
                self._write_step(t, step_ref, step_snap.exists, step, {
                    "state": d.FAILED, "error": message, "ended_at": at, "updated_at": at, "lease_until": None})
                self._count(1)
            t.update(run_ref, {"status": d.FAILED, "error": {"stage": stage or run["stage"], "message": message},
                               "finished_at": at, "updated_at": at})
            self._count(1)
            self._release_model_run(t, run, at)
            return True

        return self._run(txn)


def make_client(project: str) -> firestore.Client:
    return firestore.Client(project=project)


__all__ = ["FirestoreStore", "NotFound", "Conflict", "Busy", "gexc", "make_client"]
