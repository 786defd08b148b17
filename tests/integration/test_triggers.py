"""Retraining rules fired by label webhooks, through the real ingress, Firestore and Pub/Sub emulators
and the no-op job: counting (duplicates, concurrency), coalescing, the minimum interval, cancel, and
a Labelbox failure while creating the model run."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from lbtrain import domain as d
from lbtrain.client import ApiError
from lbtrain.reconcile import reconcile_once
from tests.conftest import fresh_id
from tests.integration.conftest import SECRET, Stack

DATA = Path(__file__).resolve().parents[1] / "data" / "label_webhooks"


def delivery(name: str, project_id: str, label_id: str = "", data_row_id: str = "") -> dict[str, Any]:
    body = json.loads((DATA / f"{name}.json").read_text())
    body["project"]["id"] = project_id
    if label_id and "id" in body:
        body["id"] = label_id
    if data_row_id:
        body["dataRow"]["id"] = data_row_id
    return body


def send(stack: Stack, topic: str, body: dict[str, Any], delivery_id: str = "",
         secret: str = SECRET) -> tuple[int, Any]:
    return stack.api.send_webhook("/webhooks/labelbox", body, secret, delivery_id=delivery_id or fresh_id("lw"),
                                  event=topic)


def label(stack: Stack, project_id: str, label_id: str = "", delivery_id: str = "",
          topic: str = "LABEL_CREATED") -> dict[str, Any]:
    name = {"LABEL_CREATED": "label_created", "LABEL_UPDATED": "label_updated", "LABEL_DELETED": "label_deleted"}[topic]
    status, answer = send(stack, topic, delivery(name, project_id, label_id or fresh_id("lab")), delivery_id)
    assert status == 200, answer
    return answer


def project(stack: Stack, rows: int = 3) -> str:
    """A file-backed Labelbox project export (the no-op job never reads the rows)."""
    project_id = fresh_id("proj")
    d_ = stack.labelbox_dir / "projects" / project_id
    d_.mkdir(parents=True)
    lines = [json.dumps({"data_row": {"id": f"dr{i}", "row_data": f"text {i}"},
                         "projects": {project_id: {"labels": [{"id": f"l{i}", "annotations": {}}]}}})
             for i in range(rows)]
    (d_ / "export.ndjson").write_text("\n".join(lines) + "\n")
    return project_id


def rule(stack: Stack, project_id: str, **extra: Any) -> dict[str, Any]:
    body = {"model_type": "text_single_classification", "model_id": "model-1", "min_labels": 3, **extra}
    return stack.api.set_trigger(project_id, body)


def test_rules_api_validates_and_needs_the_token(stack: Stack):
    pid = fresh_id("proj")
    with pytest.raises(ApiError) as bad:
        stack.api.set_trigger(pid, {"model_type": "nope", "model_id": "m"})
    assert bad.value.status == 400 and "nope" in str(bad.value)
    with pytest.raises(ApiError) as bad:
        stack.api.set_trigger(pid, {"model_type": "ner", "model_id": "m", "min_labels": 0})
    assert bad.value.status == 400 and "min_labels" in str(bad.value)
    with pytest.raises(ApiError) as bad:
        stack.api.set_trigger(pid, {"model_type": "ner"})
    assert bad.value.status == 400 and "model_id" in str(bad.value)
    from lbtrain.client import Client

    with pytest.raises(ApiError) as denied:
        Client(stack.dev.url, token="wrong", retries=0).set_trigger(pid, {"model_type": "ner", "model_id": "m"})
    assert denied.value.status == 401
    assert stack.deps.triggers.get_rule(pid) is None

    saved = rule(stack, pid, min_interval_seconds=60)
    assert saved["min_labels"] == 3 and saved["pending"] == 0 and saved["epoch"] == 1
    assert [r["project_id"] for r in stack.api.list_triggers()] == [pid]
    assert stack.api.get_trigger(pid)["min_interval_seconds"] == 60
    stack.api.delete_trigger(pid)
    with pytest.raises(ApiError) as gone:
        stack.api.get_trigger(pid)
    assert gone.value.status == 404


def test_n_distinct_labels_start_one_run_on_a_new_model_run(stack: Stack):
    pid = project(stack)
    rule(stack, pid)
    first = label(stack, pid, "lab-a", delivery_id="dl-1")
    assert first["outcome"] == "counted" and first["pending"] == 1
    assert label(stack, pid, "lab-a", delivery_id="dl-1")["outcome"] == "duplicate"  # redelivery
    assert label(stack, pid, "lab-a", topic="LABEL_UPDATED")["outcome"] == "already counted"  # same label again
    assert label(stack, pid, "lab-b", topic="LABEL_DELETED")["pending"] == 2
    assert stack.api.list_runs()["runs"] == []

    third = label(stack, pid, "lab-c")
    # Released at once: the Labelbox model run is created off the webhook request (runs topic).
    assert third["outcome"] == "held" and third["pending"] == 3
    assert third["waiting"] in ("creating the Labelbox model run", "")  # "" once the release message ran
    run = stack.wait(third["run_id"])
    assert run["status"] == d.SUCCEEDED, run
    assert run["trigger"]["source"] == "label_webhook" and run["trigger"]["project_id"] == pid
    assert run["trigger"]["labels"] == 3 and run["model_id"] == "model-1" and not run.get("waiting")
    # The model run was created in Labelbox from the project's labels, with splits, and told the statuses.
    mr = run["model_run_id"]
    rows = list(stack.deps.labelbox.export_rows(mr))
    assert [r["data_row"]["id"] for r in rows] == ["dr0", "dr1", "dr2"]
    assert all(r["experiments"]["model-1"]["runs"][mr]["split"] in ("TRAINING", "VALIDATION", "TEST") for r in rows)
    assert stack.statuses(mr)[0] == "EXPORTING_DATA" and stack.statuses(mr)[-1] == "COMPLETE"

    # A redelivered release message changes nothing: no second model run, no second start.
    from lbtrain import triggers

    model_runs_before = sorted(p.name for p in (stack.labelbox_dir / "model_runs").iterdir())
    stack.deps.bus.publish("runs", {"release_run_id": run["run_id"]}, {"kind": triggers.RELEASE})
    assert triggers.start_released(stack.deps, run["run_id"]) is None
    time.sleep(1.0)
    assert sorted(p.name for p in (stack.labelbox_dir / "model_runs").iterdir()) == model_runs_before
    assert stack.api.get_run(run["run_id"])["status"] == d.SUCCEEDED

    after = stack.api.get_trigger(pid)
    assert after["active_run_id"] is None and after["last_run_id"] == run["run_id"]
    assert after["epoch"] == 2 and after["pending"] == 0
    # A label counted in the last epoch counts again as changed since the last run.
    assert label(stack, pid, "lab-a", topic="LABEL_UPDATED")["outcome"] == "counted"
    assert len(stack.api.list_runs()["runs"]) == 1


def test_labels_during_a_run_make_one_queued_follow_up(stack: Stack):
    pid = project(stack)
    rule(stack, pid, min_labels=1, params={"noop": {"sleep": {"train": 3}}})
    first = label(stack, pid)
    run_a = first["run_id"]
    stack.wait_for(lambda: stack.api.get_run(run_a)["status"] == d.RUNNING, what="run A running")
    answers = [label(stack, pid) for _ in range(4)]
    held = {a.get("run_id") for a in answers}
    assert len(held) == 1 and run_a not in held  # one follow-up, however many labels
    run_b = held.pop()
    queued = stack.api.get_run(run_b)
    assert queued["status"] == d.QUEUED and queued["waiting"] == f"queued behind run {run_a}"
    assert queued["model_run_id"] == "" and all(s["state"] == d.PENDING for s in queued["steps"])

    assert stack.wait(run_a)["status"] == d.SUCCEEDED
    done_b = stack.wait(run_b)  # released when A ended
    assert done_b["status"] == d.SUCCEEDED and done_b["model_run_id"]
    assert done_b["model_run_id"] != stack.api.get_run(run_a)["model_run_id"]
    assert done_b["trigger"]["labels"] == 4
    assert len(stack.api.list_runs()["runs"]) == 2
    assert stack.api.get_trigger(pid)["pending"] == 0


def test_counting_is_exact_under_concurrent_and_duplicate_deliveries(stack: Stack):
    pid = project(stack)
    rule(stack, pid, min_labels=1000)
    deliveries = [(f"lab-{i}", f"dl-{i}") for i in range(24)]
    work = deliveries + deliveries  # every delivery twice
    errors: list[BaseException] = []
    outcomes: list[str] = []

    def worker(items: list[tuple[str, str]]) -> None:
        for label_id, delivery_id in items:
            try:
                outcomes.append(label(stack, pid, label_id, delivery_id=delivery_id)["outcome"])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(work[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert outcomes.count("counted") == 24 and outcomes.count("duplicate") == 24
    assert stack.api.get_trigger(pid)["pending"] == 24


def test_minimum_interval_holds_the_next_run_until_due(stack: Stack):
    pid = project(stack)
    rule(stack, pid, min_labels=1, min_interval_seconds=3600)
    run_a = label(stack, pid)["run_id"]
    assert stack.wait(run_a)["status"] == d.SUCCEEDED
    held = label(stack, pid)
    assert held["outcome"] == "held" and held["waiting"].startswith("waiting for the minimum interval")
    reconcile_once(stack.deps)  # not due yet: stays held
    assert stack.api.get_run(held["run_id"])["status"] == d.QUEUED
    from lbtrain import triggers

    later = d.now() + timedelta(seconds=3601)
    assert stack.deps.triggers.claim_release(pid, at=later) == held["run_id"]
    assert triggers.start_released(stack.deps, held["run_id"]) == held["run_id"]
    assert stack.wait(held["run_id"])["status"] == d.SUCCEEDED


def test_cancelling_the_held_run_frees_the_rule(stack: Stack):
    pid = project(stack)
    rule(stack, pid, min_labels=1, params={"noop": {"sleep": {"etl": 3}}})
    run_a = label(stack, pid)["run_id"]
    run_b = label(stack, pid)["run_id"]
    assert run_b != run_a
    cancelled = stack.api.cancel(run_b)
    assert cancelled["status"] == d.CANCELLED
    assert stack.api.get_trigger(pid)["queued_run_id"] is None
    with pytest.raises(ApiError) as nothing:
        stack.api.retry(run_b)
    assert nothing.value.status == 409
    run_c = label(stack, pid)["run_id"]
    assert run_c not in (run_a, run_b)
    assert stack.wait(run_a)["status"] == d.SUCCEEDED
    assert stack.wait(run_c)["status"] == d.SUCCEEDED


def test_labelbox_failure_keeps_the_run_waiting_until_the_reconciler_succeeds(stack: Stack):
    pid = fresh_id("proj")  # no project export yet: creating the model run fails
    rule(stack, pid, min_labels=1)
    run_id = label(stack, pid)["run_id"]
    waiting = stack.wait_for(lambda: (r := stack.api.get_run(run_id)).get("waiting", "").startswith(
        "creating the Labelbox model run failed") and r, what="the failed model-run creation to show")
    assert waiting["status"] == d.QUEUED
    assert pid in waiting["waiting"]
    d_ = stack.labelbox_dir / "projects" / pid
    d_.mkdir(parents=True)
    (d_ / "export.ndjson").write_text(json.dumps({"data_row": {"id": "dr0", "row_data": "x"}}) + "\n")
    actions = reconcile_once(stack.deps, at=d.now() + timedelta(hours=2))
    assert any("stalled release" in a for a in actions), actions
    assert stack.wait(run_id)["status"] == d.SUCCEEDED


def test_bad_and_unknown_deliveries(stack: Stack):
    pid = project(stack)
    rule(stack, pid)
    status, answer = send(stack, "REVIEW_CREATED", delivery("review_created", pid))
    assert status == 200 and answer["outcome"] == "ignored"
    with pytest.raises(ApiError) as unsigned:
        send(stack, "LABEL_CREATED", delivery("label_created", pid), secret="not-the-secret")
    assert unsigned.value.status == 401
    body = delivery("label_created", pid)
    del body["project"]
    with pytest.raises(ApiError) as bad:
        send(stack, "LABEL_CREATED", body)
    assert bad.value.status == 400 and "project.id" in str(bad.value)
    status, answer = send(stack, "WORKFLOW_ACTION", delivery("workflow_action", pid, data_row_id="dr-x"))
    assert status == 200 and answer["outcome"] == "counted"
    status, answer = send(stack, "LABEL_CREATED", delivery("label_created", fresh_id("other")))
    assert status == 200 and answer["outcome"] == "no rule"
    assert stack.api.get_trigger(pid)["pending"] == 1
