"""The event-driven core on the real emulators: webhook → launcher → job → job event → next stage."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest

from lbtrain import domain as d
from lbtrain.errors import Busy
from lbtrain.launch import handle_step
from lbtrain.messages import JobEvent, StepMessage
from lbtrain.reconcile import reconcile_once
from tests.conftest import fresh_id

STAGES = ["etl", "train", "evaluate", "deploy"]


def test_webhook_runs_every_stage_and_reports_to_labelbox(stack):
    mr = stack.model_run()
    status, body = stack.webhook(mr)
    assert status == 200 and body["created"] is True
    run = stack.wait(body["run_id"])
    assert run["status"] == "SUCCEEDED", run
    assert [s["stage"] for s in run["steps"]] == STAGES
    assert all(s["state"] == "SUCCEEDED" and s["attempt"] == 1 for s in run["steps"])
    assert run["trigger"]["source"] == "labelbox"
    assert {"run_id", "model_type", "model_run_id", "status", "metrics", "outputs"} <= set(run)
    assert run["metrics"]["macro_f1"] == 1.0  # copied from the evaluate job's outputs.json
    # Each stage's job got the earlier stages' outputs as its inputs.
    deploy_inputs = json.loads((stack.root / "s0/artifacts/runs" / run["run_id"] / "inputs/deploy-a1.json").read_text())
    assert set(deploy_inputs["upstream"]) == {"etl", "train", "evaluate"}
    assert stack.statuses(mr) == ["EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL", "COMPLETE"]
    assert stack.job_names() == sorted(d.job_name(stack.dev.config.deployment_name, run["run_id"], s, 1)
                                       for s in STAGES)
    # The model run is free again: a new request starts a new run.
    status, again = stack.webhook(mr)
    assert again["created"] is True and again["run_id"] != run["run_id"]


def test_status_history_is_kept_on_the_run_and_an_undelivered_first_report_is_marked(stack, monkeypatch):
    """The first entry is written by the transaction that creates the run (reported: null, as nothing has
    been sent yet) and stays so when the send succeeds; later entries are written after their send. A
    first report Labelbox refuses is marked reported: false."""
    mr = stack.model_run()
    status, body = stack.webhook(mr)
    assert status == 200 and body["created"] is True
    run = stack.wait(body["run_id"])
    assert run["status"] == "SUCCEEDED", run
    history = stack.deps.store.get_run(run["run_id"])["labelbox_statuses"]
    assert [(e["status"], e["reported"]) for e in history] == [
        ("EXPORTING_DATA", None), ("PREPARING_DATA", True), ("TRAINING_MODEL", True), ("COMPLETE", True)]

    labelbox = stack.deps.labelbox
    real_update = labelbox.update_status

    def refuse_the_first(model_run_id, status, **kwargs):
        if status == "EXPORTING_DATA":
            raise ConnectionError("Labelbox is down")
        return real_update(model_run_id, status, **kwargs)

    monkeypatch.setattr(labelbox, "update_status", refuse_the_first)
    mr2 = stack.model_run()
    status, body = stack.webhook(mr2)
    assert status == 200 and body["created"] is True
    run = stack.wait(body["run_id"])
    assert run["status"] == "SUCCEEDED", run
    history = stack.deps.store.get_run(run["run_id"])["labelbox_statuses"]
    assert [(e["status"], e["reported"]) for e in history] == [
        ("EXPORTING_DATA", False), ("PREPARING_DATA", True), ("TRAINING_MODEL", True), ("COMPLETE", True)]
    assert stack.statuses(mr2) == ["PREPARING_DATA", "TRAINING_MODEL", "COMPLETE"]


def test_same_delivery_twice_makes_one_run(stack):
    mr = stack.model_run()
    first = stack.webhook(mr, delivery_id="delivery-1")[1]
    second = stack.webhook(mr, delivery_id="delivery-1")[1]
    assert second == {**first, "created": False, "reason": "duplicate delivery"}
    stack.wait(first["run_id"])
    runs = stack.api.list_runs(model_run_id=mr)["runs"]
    assert [r["run_id"] for r in runs] == [first["run_id"]]


def test_request_for_active_model_run_returns_active_run(stack):
    mr = stack.model_run()
    slow = stack.api.start_run("text_single_classification", mr, params={"noop": {"sleep": {"train": 3}}})
    other = stack.webhook(mr, delivery_id=fresh_id("other"))[1]
    assert other["run_id"] == slow["run_id"] and other["created"] is False
    assert other["reason"] == "active run for model run"
    assert stack.wait(slow["run_id"])["status"] == "SUCCEEDED"
    assert len(stack.api.list_runs(model_run_id=mr)["runs"]) == 1


def test_bad_signature_writes_and_publishes_nothing(stack):
    mr = stack.model_run()
    before = (stack.deps.store.writes, stack.deps.bus.published)
    status_code = None
    try:
        stack.webhook(mr, secret="not-the-secret")
    except Exception as exc:  # noqa: BLE001 - Client raises ApiError on 4xx
        status_code = getattr(exc, "status", None)
    assert status_code == 401
    assert (stack.deps.store.writes, stack.deps.bus.published) == before
    assert stack.api.list_runs(model_run_id=mr)["runs"] == []
    assert stack.statuses(mr) == []


def test_failed_job_fails_run_then_retry_reuses_earlier_outputs(stack):
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr,
                                 params={"noop": {"fail": {"train": [1]}}})["run_id"]
    run = stack.wait(run_id)
    assert run["status"] == "FAILED"
    assert run["error"] == {"stage": "train", "message": "injected failure in train attempt 1"}
    steps = {s["stage"]: s for s in run["steps"]}
    assert steps["train"]["state"] == "FAILED" and steps["evaluate"]["state"] == "PENDING"
    assert stack.statuses(mr)[-1] == "FAILED"
    last = stack.deps.labelbox.statuses(mr)[-1]
    assert "injected failure in train attempt 1" in last["error_message"] and len(last["error_message"]) <= 255

    retried = stack.api.retry(run_id)
    assert retried["status"] in ("QUEUED", "RUNNING", "SUCCEEDED")
    run = stack.wait(run_id)
    assert run["status"] == "SUCCEEDED" and run["error"] is None
    steps = {s["stage"]: s for s in run["steps"]}
    assert steps["etl"]["attempt"] == 1  # reused, not re-run
    assert steps["train"]["attempt"] == 2
    assert [h["state"] for h in steps["train"]["attempts"]] == ["FAILED"]
    names = stack.job_names()
    assert sum("-etl-" in n for n in names) == 1 and sum("-train-" in n for n in names) == 2
    train_inputs = json.loads((stack.root / "s0/artifacts/runs" / run_id / "inputs/train-a2.json").read_text())
    assert train_inputs["upstream"]["etl"].endswith(f"/runs/{run_id}/etl/a1")
    assert stack.statuses(mr)[-1] == "COMPLETE"
    # A run that is not FAILED/CANCELLED cannot be retried.
    with pytest.raises(Exception) as err:
        stack.api.retry(run_id)
    assert getattr(err.value, "status", None) == 409


def test_cancel_running_job(stack):
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr,
                                 params={"noop": {"sleep": {"train": 120}}})["run_id"]

    def train_running():
        steps = {s["stage"]: s for s in stack.api.get_run(run_id)["steps"]}
        return steps["train"]["state"] == "RUNNING" and steps["train"]["job"]

    job = stack.wait_for(train_running, what="train RUNNING")
    started = time.monotonic()
    stack.api.cancel(run_id)
    run = stack.wait(run_id, timeout=30)
    assert run["status"] == "CANCELLED"
    assert time.monotonic() - started < 25  # the 120 s job did not run to its end
    steps = {s["stage"]: s for s in run["steps"]}
    assert steps["train"]["state"] == "CANCELLED" and steps["evaluate"]["state"] == "PENDING"
    assert stack.deps.backend.get_status(job["id"]).state == "CANCELLED"
    assert stack.deps.backend.active_jobs() == []
    assert stack.statuses(mr)[-1] == "FAILED"
    # Cancelled runs can be retried from the cancelled stage.
    stack.api.retry(run_id)
    run = stack.wait_for(lambda: stack.api.get_run(run_id)["steps"][1]["state"] == "RUNNING" or None,
                         what="retried train running")
    stack.api.cancel(run_id)
    assert stack.wait(run_id, timeout=30)["status"] == "CANCELLED"


def test_cancel_before_launch_ends_run_at_once(stack):
    mr = stack.model_run()
    # Create the run without publishing its first step: nothing is launched.
    res = stack.deps.store.create_run(run_id=d.new_run_id(), model_type="text_single_classification",
                                      model_run_id=mr, model_id="", params={}, trigger={"source": "test"},
                                      stages=tuple(STAGES), delivery_key=None)
    run = stack.api.cancel(res.run_id)
    assert run["status"] == "CANCELLED" and run["steps"][0]["state"] == "CANCELLED"
    # Its step message, arriving late, launches nothing.
    assert handle_step(stack.deps, StepMessage(res.run_id, "etl", 1)).startswith("no-op")
    assert stack.job_names() == []


class DoublingBus:
    """Publishes every message twice, as an at-least-once transport may deliver it."""

    def __init__(self, bus):
        self.bus = bus

    def publish(self, name, data, attributes=None):  # noqa: ANN001, ANN201
        self.bus.publish(name, data, attributes)
        return self.bus.publish(name, data, attributes)


def test_every_message_twice_still_one_job_per_step_attempt(stack):
    stack.deps.bus = DoublingBus(stack.deps.bus)
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    run = stack.wait(run_id)
    assert run["status"] == "SUCCEEDED"
    assert len(stack.job_names()) == 4
    # Now replay the whole run's traffic again: step messages and job events, through Pub/Sub.
    before = stack.api.get_run(run_id)
    statuses_before = stack.statuses(mr)
    bus = stack.deps.bus.bus
    for step in run["steps"]:
        bus.publish(f"step-{step['stage']}", StepMessage(run_id, step["stage"], 1).to_dict())
        bus.publish("job-events", JobEvent(job_id=step["job"]["id"], state="SUCCEEDED", run_id=run_id,
                                           stage=step["stage"], attempt=1).to_dict())
    time.sleep(2.0)
    after = stack.api.get_run(run_id)
    assert after == before
    assert len(stack.job_names()) == 4
    assert stack.statuses(mr) == statuses_before


def test_runs_topic_starts_a_run_and_redelivery_is_deduped(stack):
    mr = stack.model_run()
    bus = stack.deps.bus
    body = {"model_type": "text_single_classification", "model_run_id": mr, "idempotency_key": "k-" + mr}
    bus.publish("runs", body)
    bus.publish("runs", body)  # same idempotency key: one run
    run = stack.wait_for(lambda: stack.api.list_runs(model_run_id=mr)["runs"], what="run from the runs topic")[0]
    assert stack.wait(run["run_id"])["status"] == "SUCCEEDED"
    time.sleep(1.0)
    assert len(stack.api.list_runs(model_run_id=mr)["runs"]) == 1
    assert run["trigger"]["source"] == "pubsub"


def test_concurrent_launchers_launch_one_job(stack):
    mr = stack.model_run()
    res = stack.deps.store.create_run(run_id=d.new_run_id(), model_type="text_single_classification",
                                      model_run_id=mr, model_id="", params={"noop": {"sleep": {"etl": 30}}},
                                      trigger={"source": "test"}, stages=tuple(STAGES), delivery_key=None)
    outcomes: list[str] = []
    busy: list[str] = []

    def launch():
        # A Busy is answered 503 and Pub/Sub delivers the message again: each launcher keeps its
        # message until it gets an answer that acknowledges it (a launch or a no-op), as a
        # subscription would; the step's lease (30 s) bounds how long that can take.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                outcomes.append(handle_step(stack.deps, StepMessage(res.run_id, "etl", 1)))
                return
            except Busy as exc:  # another launcher holds the lease, or contention outlasted the retries
                busy.append(str(exc))
                time.sleep(0.5)
        outcomes.append("busy")

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 4 and sum(o.startswith("launched") for o in outcomes) == 1, (outcomes, busy)
    assert all(o.startswith(("launched", "no-op")) for o in outcomes), (outcomes, busy)
    assert len(stack.job_names()) == 1
    stack.api.cancel(res.run_id)
    assert stack.wait(res.run_id, timeout=30)["status"] == "CANCELLED"


def test_concurrent_claims_of_a_step_not_yet_written_claim_it_once(stack):
    """A step has no document until its first change: two claims that both read it missing still
    serialize on it (the run document, already RUNNING at that stage, is not written by either)."""
    store = stack.deps.store
    mr = stack.model_run()
    res = store.create_run(run_id=d.new_run_id(), model_type="text_single_classification", model_run_id=mr,
                           model_id="", params={}, trigger={"source": "test"}, stages=tuple(STAGES),
                           delivery_key=None)
    store.db.collection("runs").document(res.run_id).update({"status": d.RUNNING, "stage": "train"})
    assert not store.db.collection("runs").document(res.run_id).collection("steps").document("train").get().exists
    assert store.get_step(res.run_id, "train")["state"] == d.PENDING
    kinds: list[str] = []
    barrier = threading.Barrier(4)

    def claim():
        barrier.wait()
        try:
            kinds.append(store.claim_step(res.run_id, "train", 1).kind)
        except Busy:
            kinds.append("busy")

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kinds.count("claimed") == 1 and kinds.count("reclaim") == 0, kinds
    assert store.get_step(res.run_id, "train")["state"] == d.LAUNCHING
    store.cancel_run(res.run_id)


class DroppingBus:
    """Loses messages for some topics, as a crash between commit and publish would."""

    def __init__(self, bus, drop: set[str]):
        self.bus, self.drop = bus, drop

    def publish(self, name, data, attributes=None):  # noqa: ANN001, ANN201
        if name in self.drop:
            return "dropped"
        return self.bus.publish(name, data, attributes)


def test_reconciler_redrives_a_lost_step_message(stack):
    real_bus = stack.deps.bus
    stack.deps.bus = DroppingBus(real_bus, {"step-train"})
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    stack.wait_for(lambda: stack.api.get_run(run_id)["steps"][0]["state"] == "SUCCEEDED", what="etl done")
    time.sleep(1.0)
    assert stack.api.get_run(run_id)["steps"][1]["state"] == "PENDING"  # stuck: its message was lost
    stack.deps.bus = real_bus
    actions = reconcile_once(stack.deps, at=d.now() + timedelta(seconds=7200))
    assert any("re-drove train a1" in a for a in actions), actions
    assert stack.wait(run_id)["status"] == "SUCCEEDED"


def test_reconciler_completes_a_step_whose_event_was_lost(stack_factory):
    stack = stack_factory()
    # Point the jobs at a deployment whose job-events topic has no subscription: events vanish.
    mr = stack.model_run()
    real_config = stack.deps.backend.config
    stack.deps.backend.config = real_config.with_overrides(deployment_name=real_config.deployment_name + "-void")
    run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    stack.wait_for(lambda: stack.api.get_run(run_id)["steps"][0]["state"] == "RUNNING", what="etl running")
    job_id = stack.api.get_run(run_id)["steps"][0]["job"]["id"]
    stack.wait_for(lambda: stack.deps.backend.get_status(job_id).terminal, what="etl job ended")
    stack.deps.backend.config = real_config
    assert stack.api.get_run(run_id)["steps"][0]["state"] == "RUNNING"  # the event never arrived
    actions = reconcile_once(stack.deps, at=d.now() + timedelta(seconds=7200))
    assert any("completed lost event" in a for a in actions), actions
    assert stack.wait(run_id)["status"] == "SUCCEEDED"


def test_dead_lettered_message_fails_its_run(stack):
    mr = stack.model_run()
    res = stack.deps.store.create_run(run_id=d.new_run_id(), model_type="text_single_classification",
                                      model_run_id=mr, model_id="", params={}, trigger={"source": "test"},
                                      stages=tuple(STAGES), delivery_key=None)
    stack.deps.bus.publish("dead-letter", StepMessage(res.run_id, "etl", 1).to_dict(),
                           {"run_id": res.run_id, "stage": "etl",
                            "CloudPubSubDeadLetterSourceSubscription": "dev-step-etl-push"})
    run = stack.wait(res.run_id, timeout=30)
    assert run["status"] == "FAILED" and run["error"]["stage"] == "etl"
    assert "dev-step-etl-push" in run["error"]["message"]
    assert stack.statuses(mr)[-1] == "FAILED"
    # The model run is free again.
    assert stack.webhook(mr)[1]["created"] is True
