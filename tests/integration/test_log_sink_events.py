"""On GCP, completion events are Cloud Logging sink entries for `resource.type="ml_job"`. Here they
travel through the Pub/Sub emulator to the job-events handler, with the real aiplatform client
re-reading the job's state from a local fake of Vertex."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lbtrain import storage
from lbtrain.adapters.vertex_backend import VertexBackend
from lbtrain.messages import LOG_SINK_STATE, BadMessage, parse_job_event
from tests.fakes.vertex import FakeVertex, serve

DATA = Path(__file__).resolve().parents[1] / "data" / "logsink"


def entry(name: str, job_id: str) -> dict:
    data = json.loads((DATA / f"{name}.json").read_text())
    data["resource"]["labels"]["job_id"] = job_id
    data["logName"] = data["logName"].replace("1234567890123456789", job_id)
    return data


def test_golden_entries_parse():
    event = parse_job_event(json.loads((DATA / "ml_job_succeeded.json").read_text()))
    assert event.job_id == "1234567890123456789" and event.state == LOG_SINK_STATE
    with pytest.raises(BadMessage, match="not a job event"):
        parse_job_event({"resource": {"type": "cloud_run_revision", "labels": {}}})
    with pytest.raises(BadMessage, match="job_id"):
        parse_job_event({"resource": {"type": "ml_job", "labels": {}}})


@pytest.fixture
def vertex_stack(stack):
    fake = FakeVertex()
    server = serve(fake)
    cfg = stack.dev.config.with_overrides(job_backend="vertex", job_image="img:1", region="us-central1",
                                          vertex_api_endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    stack.deps.backend = VertexBackend(cfg)
    yield stack, fake
    server.shutdown()


def test_sink_entries_drive_the_pipeline(vertex_stack):
    stack, fake = vertex_stack
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    stack.wait_for(lambda: stack.api.get_run(run_id)["steps"][0]["state"] == "RUNNING", what="etl submitted")
    etl = stack.api.get_run(run_id)["steps"][0]
    job_id = etl["job"]["id"]
    assert etl["job"]["backend"] == "vertex" and job_id in fake.jobs
    assert fake.created()[0]["displayName"] == etl["job"]["name"]

    # Log lines while the job runs: acknowledged, nothing moves.
    fake.set_state(job_id, "RUNNING")
    stack.deps.bus.publish("job-events", entry("ml_job_running", job_id))
    time.sleep(1.5)
    assert stack.api.get_run(run_id)["steps"][0]["state"] == "RUNNING"

    # The job wrote its outputs and Vertex says it succeeded; the final log line arrives (twice).
    out = storage.run_dir(stack.dev.config.artifact_root, run_id, "etl", 1)
    storage.write_json(storage.join(out, "outputs.json"), {"metrics": {"examples": 3}, "uris": {}})
    fake.set_state(job_id, "SUCCEEDED")
    stack.deps.bus.publish("job-events", entry("ml_job_succeeded", job_id))
    stack.deps.bus.publish("job-events", entry("ml_job_succeeded", job_id))
    stack.wait_for(lambda: stack.api.get_run(run_id)["steps"][1]["state"] == "RUNNING", what="train submitted")
    time.sleep(1.0)
    assert len(fake.created()) == 2  # etl, then train once
    train_id = stack.api.get_run(run_id)["steps"][1]["job"]["id"]

    # A failure: the error comes from Vertex, not from the log line.
    fake.set_state(train_id, "FAILED", error="The replica workerpool0-0 exited with a non-zero status of 137.")
    stack.deps.bus.publish("job-events", entry("ml_job_failed", train_id))
    run = stack.wait(run_id, timeout=30)
    assert run["status"] == "FAILED" and run["error"]["stage"] == "train"
    assert "status of 137" in run["error"]["message"]
    assert stack.statuses(mr)[-1] == "FAILED"


def test_entries_for_jobs_that_are_not_ours_are_acked(vertex_stack):
    stack, fake = vertex_stack
    before = stack.deps.store.writes
    stack.deps.bus.publish("job-events", entry("ml_job_succeeded", "42424242"))
    time.sleep(1.0)
    assert stack.deps.store.writes == before


def test_a_job_that_ends_before_its_launch_is_recorded_is_not_lost(vertex_stack):
    """The sink entry arrives while the step is still LAUNCHING (its job not recorded yet): the job's
    labels name its step, the handler answers 503 until the launcher records the job, then the step moves."""
    stack, fake = vertex_stack
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    stack.wait_for(lambda: stack.api.get_run(run_id)["steps"][0]["state"] == "RUNNING", what="etl submitted")
    job_id = stack.api.get_run(run_id)["steps"][0]["job"]["id"]
    # Rewind Firestore to "submitted but not recorded": step LAUNCHING, no job.
    db = stack.deps.store.db
    step_ref = db.collection("runs").document(run_id).collection("steps").document("etl")
    step_ref.update({"state": "LAUNCHING", "job": None})
    assert stack.deps.backend.job_step(job_id) == {"run_id": run_id, "stage": "etl", "attempt": 1}

    out = storage.run_dir(stack.dev.config.artifact_root, run_id, "etl", 1)
    storage.write_json(storage.join(out, "outputs.json"), {"metrics": {}, "uris": {}})
    fake.set_state(job_id, "SUCCEEDED")
    from lbtrain.completion import handle_job_event
    from lbtrain.errors import Busy
    from lbtrain.messages import parse_job_event

    with pytest.raises(Busy):  # the push handler answers 503: Pub/Sub delivers it again later
        handle_job_event(stack.deps, parse_job_event(entry("ml_job_succeeded", job_id)))
    assert step_ref.get().get("state") == "LAUNCHING"

    # The launcher records the job; the redelivered entry then completes the step.
    from lbtrain.domain import JobRef

    stack.deps.store.record_launch(run_id, "etl", 1, JobRef(backend="vertex", id=job_id, name=f"x-{job_id}"))
    result = handle_job_event(stack.deps, parse_job_event(entry("ml_job_succeeded", job_id)))
    assert "moved" in result and "next train" in result
    # A job of another deployment (labels say so) is not ours.
    other = backend_for_deployment(stack, fake, "someone-else")
    assert other.job_step(job_id) is None


def backend_for_deployment(stack, fake, deployment: str) -> VertexBackend:
    return VertexBackend(stack.deps.backend.config.with_overrides(deployment_name=deployment))
