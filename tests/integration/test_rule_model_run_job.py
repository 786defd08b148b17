"""A retraining rule's Labelbox model run is created by a job (the run's `modelrun` step), never inside
a push request: the local stack on the emulators with LABELBOX_BACKEND=sdk, the real labelbox SDK
talking to the fake Labelbox API (tests/fakes/labelbox_server.py), whose counts are the proof.

Redelivered and concurrent release and step messages launch one job and create one model run; the
push handlers answer before the model run exists and never touch Labelbox; a failed job leaves the
run waiting with the reason and the reconciler's relaunch completes the same model run; a project
with 5,000 labeled rows (slow upsert and export) runs without any request waiting on Labelbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests

from lbtrain import domain as d
from lbtrain.adapters.labelbox import split_for
from lbtrain.adapters.trigger_store import CREATING
from lbtrain.messages import StepMessage, encode_push
from lbtrain.reconcile import reconcile_once
from tests.conftest import fresh_id
from tests.fakes.labelbox_server import FakeLabelbox, serve
from tests.integration.conftest import SECRET, Stack

API_KEY = "rules-job-labelbox-key-0123456789"
STATUSES = ["EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL", "COMPLETE"]
FAST = 5.0  # seconds: a push answered within this did no Labelbox work (the ack deadline is 60 s)


@pytest.fixture
def fake() -> Iterator[FakeLabelbox]:
    fake = FakeLabelbox(chunk_lines=1000)
    server = serve(fake)
    yield fake
    for gate in fake.gates.values():  # never leave a job blocked on a held call
        gate.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def sdk_stack(stack_factory: Callable[..., Stack], fake: FakeLabelbox) -> Stack:
    return stack_factory(labelbox_backend="sdk", labelbox_api_key=API_KEY,
                         labelbox_endpoint=f"{fake.base_url}/graphql")


class Tripwire:
    """Stands in for the stack's Labelbox adapter: records any use (report_status swallows errors)."""

    def __init__(self) -> None:
        self.used: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.used.append(f"{name} in {threading.current_thread().name}")
        raise AssertionError(f"Labelbox used: {name}")


def project(fake: FakeLabelbox, rows: int) -> tuple[str, str, list[str]]:
    """A Labelbox project whose `rows` data rows are all labeled, and a model: (project, model, rows)."""
    project_id, model_id = fresh_id("proj"), fresh_id("model")
    fake.add_model(model_id)
    fake.add_project(project_id, [
        {"data_row": {"id": f"dr-{i:05d}", "global_key": f"k{i}", "row_data": f"text {i}"},
         "media_attributes": {"mime_type": "text/plain"},
         "projects": {project_id: {"name": "p", "labels": [{"id": f"lab-{i:05d}", "annotations": {
             "objects": [], "relationships": [], "classifications": [
                 {"name": "sentiment", "value": "sentiment", "radio_answer": {"name": "pos", "value": "pos"}}]}}]}}}
        for i in range(rows)])
    return project_id, model_id, [f"dr-{i:05d}" for i in range(rows)]


def label(stack: Stack, project_id: str) -> tuple[dict[str, Any], float]:
    """One LABEL_CREATED webhook: its answer and how long the ingress took."""
    body = {"id": fresh_id("lab"), "project": {"id": project_id}, "dataRow": {"id": fresh_id("dr")}}
    started = time.monotonic()
    status, answer = stack.api.send_webhook("/webhooks/labelbox", body, SECRET, delivery_id=fresh_id("lw"),
                                            event="LABEL_CREATED")
    assert status == 200, answer
    return answer, time.monotonic() - started


def push(stack: Stack, path: str, data: dict[str, Any], attributes: dict[str, str]) -> tuple[int, float]:
    """Deliver a message to a push endpoint as Pub/Sub does: (status, seconds until the answer)."""
    started = time.monotonic()
    resp = requests.post(stack.dev.url + path, json=encode_push(data, attributes, message_id=fresh_id("m")),
                         timeout=60)
    return resp.status_code, time.monotonic() - started


def release_push(stack: Stack, run_id: str) -> tuple[int, float]:
    return push(stack, "/push/runs", {"release_run_id": run_id}, {"kind": "release", "run_id": run_id})


def step_push(stack: Stack, run_id: str, attempt: int = 1) -> tuple[int, float]:
    msg = StepMessage(run_id, d.MODELRUN, attempt)
    return push(stack, f"/push/step/{d.MODELRUN}", msg.to_dict(), msg.attributes())


def count_submits(stack: Stack) -> list[str]:
    """Names of the jobs the stack's launcher submits from now on (the launcher runs in this process)."""
    backend, submitted = stack.deps.backend, []
    submit = backend.submit

    def counting(spec: Any) -> Any:
        submitted.append(spec.name)
        return submit(spec)

    backend.submit = counting
    return submitted


def released_without_a_message(stack: Stack, project_id: str, **rule: Any) -> str:
    """A rule run released by the trigger store alone, nothing published: the state a redelivery meets."""
    stack.api.set_trigger(project_id, {"model_type": "text_single_classification", "min_labels": 1,
                                       "min_interval_seconds": 3600, **rule})
    stack.deps.triggers._ref(project_id).update({"last_fired_at": d.now()})  # the rule fired a moment ago
    answer, _ = label(stack, project_id)
    assert answer["outcome"] == "held" and answer["waiting"].startswith("waiting for the minimum interval")
    run_id = stack.deps.triggers.claim_release(project_id, at=d.now() + timedelta(seconds=3601))
    assert run_id == answer["run_id"]
    return run_id


def modelrun_jobs(stack: Stack) -> list[str]:
    return [n for n in stack.job_names() if f"-{d.MODELRUN}-" in n]


def test_concurrent_redelivered_releases_launch_one_job_and_create_one_model_run(sdk_stack: Stack,
                                                                                 fake: FakeLabelbox):
    stack = sdk_stack
    project_id, model_id, rows = project(fake, 30)
    run_id = released_without_a_message(stack, project_id, model_id=model_id)
    run = stack.api.get_run(run_id)
    assert run["stage"] == d.MODELRUN and run["waiting"] == CREATING and run["model_run_id"] == ""
    modelrun_step = next(s for s in run["steps"] if s["stage"] == d.MODELRUN)
    assert modelrun_step["state"] == d.PENDING and run["steps"][0] == modelrun_step  # first on the timeline

    submitted = count_submits(stack)
    held = fake.hold("GetModelPyApi")  # the job's first Labelbox call waits until the pushes are done
    tripwire = stack.deps.labelbox = Tripwire()
    answers: list[tuple[str, int, float]] = []
    pushes = [("release", release_push)] * 6 + [("step", step_push)] * 2
    threads = [threading.Thread(target=lambda k=k, p=p: answers.append((k, *p(stack, run_id)))) for k, p in pushes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Release pushes are acked at once. A step push that meets another launcher's claim (the releases'
    # step messages arrive at the same time) may answer 503 for a redelivery, after the emulator's
    # contention retries: always within the ack deadline.
    assert len(answers) == 8 and all(code in (204, 503) for _, code, _ in answers), f"{answers}"
    assert all(code == 204 and seconds < FAST for kind, code, seconds in answers if kind == "release"), f"{answers}"
    assert all(seconds < 60 for _, _, seconds in answers), f"{answers}"
    stack.wait_for(lambda: "GetModelPyApi" in fake.operations(), what="the modelrun job to call Labelbox")
    # Every push answered while the model run did not exist, and none of them used Labelbox.
    assert fake.created_model_runs == [] and fake.operations() == ["GetModelPyApi"]
    assert tripwire.used == []
    del stack.deps.labelbox  # the cached adapter is built again for the completion's status report
    held.set()

    done = stack.wait(run_id)
    assert done["status"] == d.SUCCEEDED, done
    modelrun_job = d.job_name(stack.dev.config.deployment_name, run_id, d.MODELRUN, 1)
    assert [n for n in submitted if f"-{d.MODELRUN}-" in n] == [modelrun_job]  # one launch, whatever came in
    assert modelrun_jobs(stack) == [modelrun_job]
    assert fake.created_model_runs == [{"name": f"{stack.dev.config.deployment_name}-{run_id}", "config": None,
                                        "modelId": model_id}]
    (mr,) = fake.model_runs_of(model_id)
    assert done["model_run_id"] == mr and not done.get("waiting")
    assert [s["stage"] for s in done["steps"]] == [d.MODELRUN, "etl", "train", "evaluate", "deploy", "prelabel"]
    assert all(s["state"] == d.SUCCEEDED and s["attempt"] == 1 for s in done["steps"])
    assert fake.model_runs[mr].splits == {dr: split_for(dr) for dr in rows}
    statuses = [s for s in fake.statuses if s["model_run_id"] == mr]
    assert [s["status"] for s in statuses] == STATUSES
    assert statuses[0]["metadata"]["trigger"] == f"labels in project {project_id}"

    # Releases redelivered after the start change nothing.
    assert release_push(stack, run_id)[0] == 204 and step_push(stack, run_id)[0] == 204
    time.sleep(1.0)
    assert len(fake.created_model_runs) == 1 and modelrun_jobs(stack) == [modelrun_job]
    assert submitted.count(modelrun_job) == 1


def test_a_failed_modelrun_job_waits_with_the_reason_and_the_reconciler_completes_it(sdk_stack: Stack,
                                                                                    fake: FakeLabelbox):
    stack = sdk_stack
    project_id, model_id, rows = project(fake, 12)
    # Attempt 1 creates the model run, then Labelbox refuses the split assignment.
    fake.fail("assignDataSplitPyApi", 200, body={"errors": [
        {"message": "split service unavailable", "extensions": {"code": "OPERATION_NOT_ALLOWED"}}]})
    stack.api.set_trigger(project_id, {"model_type": "text_single_classification", "model_id": model_id,
                                       "min_labels": 1})
    run_id = label(stack, project_id)[0]["run_id"]
    waiting = stack.wait_for(lambda: (r := stack.api.get_run(run_id)).get("waiting", "").startswith(
        "creating the Labelbox model run failed, will retry") and r, what="the failed modelrun job to show")
    assert "split service unavailable" in waiting["waiting"]
    assert waiting["status"] == d.QUEUED and waiting["model_run_id"] == "" and waiting["error"] is None
    failed = next(s for s in waiting["steps"] if s["stage"] == d.MODELRUN)
    assert failed["state"] == d.FAILED and "split service unavailable" in failed["error"]
    assert stack.api.get_trigger(project_id)["active_run_id"] == run_id  # the rule still waits for this run
    assert len(fake.created_model_runs) == 1
    reconcile_once(stack.deps)  # not stale yet: nothing relaunched
    assert modelrun_jobs(stack) == [d.job_name(stack.dev.config.deployment_name, run_id, d.MODELRUN, 1)]

    actions = reconcile_once(stack.deps, at=d.now() + timedelta(hours=2))
    assert any("stalled release" in a and "modelrun a2" in a for a in actions), actions
    done = stack.wait(run_id)
    assert done["status"] == d.SUCCEEDED, done
    # The second attempt found the model run by name and completed it: still one model run.
    assert len(fake.created_model_runs) == 1
    (mr,) = fake.model_runs_of(model_id)
    assert done["model_run_id"] == mr and fake.model_runs[mr].splits == {dr: split_for(dr) for dr in rows}
    step = next(s for s in done["steps"] if s["stage"] == d.MODELRUN)
    assert step["attempt"] == 2 and [a["state"] for a in step["attempts"]] == [d.FAILED]
    assert len(modelrun_jobs(stack)) == 2
    assert [s["status"] for s in fake.statuses if s["model_run_id"] == mr] == STATUSES


def test_a_rule_on_5000_labeled_rows_never_holds_a_request(sdk_stack: Stack, fake: FakeLabelbox):
    stack = sdk_stack
    project_id, model_id, rows = project(fake, 5000)
    fake.slow.update({"createMEAModelRunProjectLabelRegistrationTaskPyApi": 1.0,  # a big project's upsert …
                      "exportDataRowsInModelRunPyApi": 1.0})  # … and export
    created = fake.hold("CreateModelRunPyApi")
    stack.api.set_trigger(project_id, {"model_type": "text_single_classification", "model_id": model_id,
                                       "min_labels": 1})
    answer, seconds = label(stack, project_id)
    assert answer["outcome"] == "held" and answer["waiting"] == CREATING and seconds < FAST
    run_id = answer["run_id"]
    code, seconds = release_push(stack, run_id)  # a redelivered release, as the runs topic may bring
    assert code == 204 and seconds < FAST
    stack.wait_for(lambda: "CreateModelRunPyApi" in fake.operations(), what="the job to create the model run")
    # The webhook and the push were answered while the job had not created the model run yet.
    assert fake.created_model_runs == []
    running = stack.api.get_run(run_id)
    assert running["status"] == d.RUNNING and running["stage"] == d.MODELRUN and running["waiting"] == CREATING
    created.set()

    done = stack.wait(run_id, timeout=180)
    assert done["status"] == d.SUCCEEDED, done
    (mr,) = fake.model_runs_of(model_id)
    assert done["model_run_id"] == mr and len(fake.created_model_runs) == 1
    assert len(fake.model_runs[mr].members) == 5000
    assert sorted(dr for a in fake.split_assignments for dr in a["data_row_ids"]) == rows  # each row once
    assert [s["status"] for s in fake.statuses if s["model_run_id"] == mr] == STATUSES


def test_cancelling_a_run_while_its_model_run_is_created_frees_the_rule(sdk_stack: Stack, fake: FakeLabelbox):
    stack = sdk_stack
    project_id, model_id, _ = project(fake, 5)
    held = fake.hold("GetModelPyApi")
    stack.api.set_trigger(project_id, {"model_type": "text_single_classification", "model_id": model_id,
                                       "min_labels": 1})
    run_id = label(stack, project_id)[0]["run_id"]
    stack.wait_for(lambda: "GetModelPyApi" in fake.operations(), what="the modelrun job to call Labelbox")
    assert stack.api.get_run(run_id)["status"] == d.RUNNING
    assert stack.api.cancel(run_id)["status"] == d.CANCELLING  # the job is cancelled at the backend
    done = stack.wait(run_id, timeout=60)
    held.set()
    assert done["status"] == d.CANCELLED and done["model_run_id"] == ""
    assert next(s for s in done["steps"] if s["stage"] == d.MODELRUN)["state"] == d.CANCELLED
    assert stack.api.get_trigger(project_id)["active_run_id"] is None  # the rule can fire again
    assert fake.created_model_runs == [] and fake.statuses == []  # no model run: nothing to tell Labelbox


def test_a_run_released_by_the_previous_version_is_started_by_its_release_message(sdk_stack: Stack,
                                                                                 fake: FakeLabelbox):
    """Before the modelrun step, a release only set the rule's active run and `waiting`, and its
    runs-topic message created the model run: such a message, still in flight, starts the job."""
    stack = sdk_stack
    project_id, model_id, _ = project(fake, 6)
    run_id = released_without_a_message(stack, project_id, model_id=model_id)
    store = stack.deps.store
    store._step_ref(run_id, d.MODELRUN).delete()  # what the previous version's release left
    store._run_ref(run_id).update({"released_at": None, "stage": "etl"})
    assert stack.deps.triggers.get_rule(project_id)["active_run_id"] == run_id
    assert release_push(stack, run_id)[0] == 204
    done = stack.wait(run_id)
    assert done["status"] == d.SUCCEEDED and done["model_run_id"] in fake.model_runs_of(model_id)
    assert [s["stage"] for s in done["steps"]][0] == d.MODELRUN and len(fake.created_model_runs) == 1
