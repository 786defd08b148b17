"""Admission limits (lbtrain/admission.py) through the real ingress, Firestore and Pub/Sub emulators and
the no-op job: at most N active runs, arrival order, the "N runs ahead" reason, the monthly budget,
cancel and retry of queued runs, and a rule's released run."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from typing import Any

from lbtrain import admission
from lbtrain import domain as d
from lbtrain.reconcile import reconcile_once
from tests.conftest import fresh_id
from tests.integration.conftest import Stack

AHEAD = re.compile(r"waiting for a slot: (\d+) runs? ahead")


def start(stack: Stack, **params: Any) -> str:
    return stack.api.start_run("text_single_classification", stack.model_run(), params=params)["run_id"]


def admission_doc(stack: Stack) -> dict[str, Any]:
    return admission.AdmissionStore(stack.deps.store, stack.dev.config.deployment_name,
                                    admission.Limits.from_config(stack.dev.config)).get()


class Sampler:
    """Samples Firestore while runs go: the runs holding a slot and the runs with a job under way."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.max_admitted = self.max_running = 0
        self.reasons: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            runs = self.stack.deps.store.active_runs()
            admitted = [r for r in runs if r.get("admission") == d.ADMISSION_ADMITTED]
            self.max_admitted = max(self.max_admitted, len(admitted))
            self.max_running = max(self.max_running, sum(r["status"] == d.RUNNING for r in runs))
            for r in runs:
                if r.get("waiting") and (not self.reasons.get(r["run_id"]) or
                                         self.reasons[r["run_id"]][-1] != r["waiting"]):
                    self.reasons.setdefault(r["run_id"], []).append(r["waiting"])
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def max_overlap(intervals: list[tuple[Any, Any]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_ten_runs_with_a_limit_of_two(stack_factory):
    stack = stack_factory(max_active_runs=2)
    with Sampler(stack) as sampler:
        run_ids = [start(stack, noop={"sleep": {"etl": 1.0}}) for _ in range(10)]
        last = stack.api.get_run(run_ids[-1])
        assert last["status"] == d.QUEUED and AHEAD.match(last["waiting"]), last
        runs = [stack.wait(run_id, timeout=240) for run_id in run_ids]
    assert [r["status"] for r in runs] == [d.SUCCEEDED] * 10, [(r["run_id"], r["status"], r.get("error")) for r in runs]
    assert sampler.max_admitted <= 2 and sampler.max_running <= 2, (sampler.max_admitted, sampler.max_running)
    # From the records: jobs (first launch → last end) of at most 2 runs overlapped, slots were taken in
    # arrival order, and no job launched before its run was admitted.
    spans = [(r["steps"][0]["launched_at"], r["steps"][-1]["ended_at"]) for r in runs]
    assert max_overlap(spans) <= 2
    assert sorted(run_ids, key=lambda i: runs[run_ids.index(i)]["admitted_at"]) == run_ids
    assert all(r["admitted_at"] <= r["steps"][0]["launched_at"] for r in runs)
    assert all(r["admission"] == d.ADMISSION_ADMITTED and not r.get("waiting") for r in runs)
    # The last run's reason counted down as the runs ahead of it finished (the sampler polls: on a loaded
    # machine it can miss a state that lasts a moment, such as the final "0 runs ahead").
    counts = [int(m.group(1)) for m in map(AHEAD.match, sampler.reasons.get(run_ids[-1], [])) if m]
    assert len(counts) >= 3 and counts == sorted(counts, reverse=True) and counts[-1] <= 1, sampler.reasons
    assert counts[0] >= 4, sampler.reasons  # it started behind most of the others
    # The last run's slot is released just after its status is committed (finish_report).
    doc = stack.wait_for(lambda: (doc := admission_doc(stack))["active"] == {} and doc, what="last slot released")
    assert doc["queue"] == []
    assert sum(doc["node_hours"].values()) > 0  # every job's duration was counted


def test_budget_used_up_holds_runs_until_the_reconciler_sees_room(stack_factory):
    stack = stack_factory(monthly_node_hours=1e-6)  # used up by the first run's jobs
    first = start(stack)
    assert stack.wait(first)["status"] == d.SUCCEEDED
    used = stack.wait_for(lambda: admission_doc(stack)["node_hours"], what="node-hours counted")
    assert list(used) == [admission.month_of(d.now())] and next(iter(used.values())) > 1e-6
    second = start(stack)
    time.sleep(1.0)
    run = stack.api.get_run(second)
    assert run["status"] == d.QUEUED and run["steps"][0]["state"] == d.PENDING and stack.statuses(
        run["model_run_id"]) == ["EXPORTING_DATA"]
    assert run["waiting"].startswith("waiting for the monthly budget: ") and "node-hours used in" in run["waiting"]
    # A larger budget (or a new month): the reconciler's round admits the waiting run.
    stack.deps.config = stack.deps.config.with_overrides(monthly_node_hours=1000.0)
    actions = reconcile_once(stack.deps, at=d.now() + timedelta(seconds=7200))
    assert f"{second}: admitted" in actions, actions
    assert stack.wait(second)["status"] == d.SUCCEEDED


def test_cancel_leaves_the_queue_and_retry_enters_it_again(stack_factory):
    stack = stack_factory(max_active_runs=1)
    gate = stack.root / fresh_id("gate")
    a = start(stack, noop={"progress": {"train": {"epochs": 1, "gate": str(gate)}}})
    b, c = start(stack), start(stack)
    assert stack.api.get_run(b)["waiting"].startswith("waiting for a slot: 0 runs ahead")
    assert stack.api.get_run(c)["waiting"].startswith("waiting for a slot: 1 run ahead")
    cancelled = stack.api.cancel(b)
    assert cancelled["status"] == d.CANCELLED and cancelled["steps"][0]["state"] == d.CANCELLED
    assert [e["run_id"] for e in admission_doc(stack)["queue"]] == [c]
    assert stack.api.get_run(b).get("waiting") is None  # a cancelled run waits for nothing
    assert stack.api.get_run(c)["waiting"].startswith("waiting for a slot: 0 runs ahead")
    # B's retry joins the queue behind C; A's end admits C, C's admits B.
    stack.api.retry(b)
    assert stack.api.get_run(b)["waiting"].startswith("waiting for a slot: 1 run ahead")
    gate.write_text("go")
    runs = {run_id: stack.wait(run_id, timeout=120) for run_id in (a, c, b)}
    assert all(r["status"] == d.SUCCEEDED for r in runs.values())
    assert runs[a]["finished_at"] <= runs[c]["admitted_at"] and runs[c]["finished_at"] <= runs[b]["admitted_at"]
    assert runs[b]["steps"][0]["attempt"] == 2


def test_a_rule_run_waits_for_a_slot_then_creates_its_model_run(stack_factory):
    from tests.integration.test_triggers import label, project, rule

    stack = stack_factory(max_active_runs=1)
    gate = stack.root / fresh_id("gate")
    busy = start(stack, noop={"progress": {"train": {"epochs": 1, "gate": str(gate)}}})
    pid = project(stack)
    rule(stack, pid, min_labels=1)
    held = label(stack, pid)
    assert held["outcome"] == "held"
    run = stack.wait_for(lambda: (r := stack.api.get_run(held["run_id"])).get("released_at") and r, what="release")
    assert run["status"] == d.QUEUED and run["admission"] == d.ADMISSION_QUEUED
    assert run["waiting"].startswith("waiting for a slot: 0 runs ahead")
    assert len(list((stack.labelbox_dir / "model_runs").iterdir())) == 1  # the busy run's: none created yet
    gate.write_text("go")
    assert stack.wait(busy)["status"] == d.SUCCEEDED
    run = stack.wait(held["run_id"], timeout=120)
    assert run["status"] == d.SUCCEEDED and run["model_run_id"] and run["admitted_at"] >= stack.api.get_run(
        busy)["finished_at"]


def test_reconciler_enters_a_run_whose_admission_was_lost(stack_factory):
    stack = stack_factory(max_active_runs=1)
    # A run created waiting for admission whose entering transaction never ran (a crash after create).
    res = stack.deps.store.create_run(run_id=d.new_run_id(), model_type="text_single_classification",
                                      model_run_id=stack.model_run(), model_id="", params={},
                                      trigger={"source": "test"}, stages=("etl", "train", "evaluate", "deploy"),
                                      delivery_key=None, admission_hold=True)
    time.sleep(0.5)
    assert stack.api.get_run(res.run_id)["steps"][0]["state"] == d.PENDING
    actions = reconcile_once(stack.deps, at=d.now() + timedelta(seconds=7200))
    assert f"{res.run_id}: entered admission (admitted)" in actions, actions
    assert stack.wait(res.run_id)["status"] == d.SUCCEEDED


class DroppingBus:
    """Loses the messages of some topics, as a crash between a commit and its publish would."""

    def __init__(self, bus, drop: set[str]):  # noqa: ANN001
        self.bus, self.drop = bus, drop

    def publish(self, name, data, attributes=None):  # noqa: ANN001, ANN201
        return "dropped" if name in self.drop else self.bus.publish(name, data, attributes)


def test_reconciler_repairs_a_lost_release_and_a_lost_publish(stack_factory, monkeypatch):
    stack = stack_factory(max_active_runs=1)
    first = start(stack)
    second = start(stack)
    assert stack.api.get_run(second)["admission"] == d.ADMISSION_QUEUED
    # The first run ends but its slot is never given back (the release transaction was lost).
    lost: list[str] = []
    monkeypatch.setattr(admission, "finished", lambda deps, run: lost.append(run["run_id"]) or [])
    assert stack.wait(first)["status"] == d.SUCCEEDED
    stack.wait_for(lambda: first in lost, what="the first run's release (lost)")
    assert stack.api.get_run(second)["waiting"].startswith("waiting for a slot: 0 runs ahead")
    monkeypatch.undo()
    # The reconciler gives the slot back and admits the second run, whose step message is lost too.
    real_bus = stack.deps.bus
    stack.deps.bus = DroppingBus(real_bus, {"step-etl"})
    actions = reconcile_once(stack.deps)
    assert f"{first}: released its admission slot (SUCCEEDED); admitted {second}" in actions, actions
    run = stack.api.get_run(second)
    assert run["admission"] == d.ADMISSION_ADMITTED and run["steps"][0]["state"] == d.PENDING
    stack.deps.bus = real_bus
    actions = reconcile_once(stack.deps, at=d.now() + timedelta(seconds=7200))
    assert f"{second}: re-drove etl a1" in actions, actions
    assert stack.wait(second)["status"] == d.SUCCEEDED
    stack.wait_for(lambda: admission_doc(stack)["active"] == {}, what="slot released")
