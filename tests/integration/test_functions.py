"""The Cloud Run functions through functions-framework, fed the golden Pub/Sub push envelope shape
(no ce-* headers: the framework turns it into a CloudEvent), against the emulators."""

from __future__ import annotations

import json

import functions_framework
import pytest

from lbtrain.config import to_env
from lbtrain.messages import JobEvent, encode_push
from tests.conftest import ROOT


@pytest.fixture
def function_env(stack, monkeypatch):
    for key, value in to_env(stack.dev.config).items():
        monkeypatch.setenv(key, value)
    return stack


def lost_event_run(stack):
    """A run whose etl job finished but whose completion event never arrived."""
    real = stack.deps.backend.config
    stack.deps.backend.config = real.with_overrides(deployment_name=real.deployment_name + "-void")
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    stack.wait_for(lambda: stack.api.get_run(run_id)["steps"][0]["state"] == "RUNNING", what="etl running")
    job_id = stack.api.get_run(run_id)["steps"][0]["job"]["id"]
    stack.wait_for(lambda: stack.deps.backend.get_status(job_id).terminal, what="etl job ended")
    stack.deps.backend.config = real
    return run_id, job_id


def test_job_events_function_moves_the_step(function_env):
    stack = function_env
    run_id, job_id = lost_event_run(stack)
    app = functions_framework.create_app("on_job_event", str(ROOT / "functions/job_events/main.py"), "cloudevent")
    envelope = encode_push(JobEvent(job_id=job_id, state="SUCCEEDED", run_id=run_id, stage="etl", attempt=1).to_dict(),
                           subscription=f"projects/{stack.dev.config.project}/subscriptions/job-events-push")
    client = app.test_client()
    assert client.post("/", json=envelope).status_code == 200
    assert client.post("/", json=envelope).status_code == 200  # the duplicate is a no-op
    run = stack.wait(run_id)
    assert run["status"] == "SUCCEEDED"
    assert [s["attempt"] for s in run["steps"]] == [1, 1, 1, 1]


def test_reconciler_function_completes_lost_event(function_env, monkeypatch):
    stack = function_env
    run_id, _ = lost_event_run(stack)
    monkeypatch.setenv("LBTRAIN_STALE_AFTER_SECONDS", "0")
    app = functions_framework.create_app("reconcile", str(ROOT / "functions/reconciler/main.py"), "http")
    resp = app.test_client().post("/")
    assert resp.status_code == 200
    actions = json.loads(resp.data)["actions"]
    assert any(run_id in a and "completed lost event" in a for a in actions), actions
    assert stack.wait(run_id)["status"] == "SUCCEEDED"
