"""End to end with JOB_BACKEND=vertex: `lbtrain dev` submits every stage as a Vertex AI CustomJob to a
local fake of Vertex's REST API (the real aiplatform client at the wire); the fake runs each job's
container command as a local process and reports state changes as Cloud Logging sink entries on the
job-events topic, as the log sink does on GCP; artifacts live on a GCS emulator (ARTIFACT_ROOT=gs://).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lbtrain.emulators import free_port
from tests.conftest import ARTIFACTS, fresh_id, storage_emulator
from tests.e2e.conftest import SECRET, TOKEN, Dev, dev_env, running_dev
from tests.fakes.vertex import FakeVertex, serve
from tests.fakes.vertex_runner import JobRunner

BUCKET = "lbtrain-e2e"
JOB_IMAGE = "us-docker.pkg.dev/e2e/lbtrain/jobs-cpu:e2e"
SERVING_IMAGE = "us-docker.pkg.dev/e2e/lbtrain/serving:e2e"


@pytest.fixture(scope="module")
def gcs_host() -> Iterator[str]:
    with storage_emulator(BUCKET) as host:
        yield host


@pytest.fixture(scope="module")
def vertex_dev(emulator_hosts: dict[str, str], gcs_host: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dev, FakeVertex, JobRunner]]:
    root = tmp_path_factory.mktemp("e2e-vertex")
    fake = FakeVertex()
    server = serve(fake)
    port = free_port()
    env = dev_env(root, port, emulator_hosts, JOB_BACKEND="vertex", JOB_IMAGE=JOB_IMAGE,
                  SERVING_IMAGE=SERVING_IMAGE, REGION="us-central1",
                  VERTEX_API_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
                  ARTIFACT_ROOT=f"gs://{BUCKET}/lbtrain", STORAGE_EMULATOR_HOST=gcs_host,
                  JOB_SERVICE_ACCOUNT="lbtrain-jobs@e2e.iam.gserviceaccount.com",
                  MODEL_OPTIONS=json.dumps({"image_single_classification": {"training": "automl"}}))
    project = env["GOOGLE_CLOUD_PROJECT"]
    # What the job's container would get from its environment on Vertex, and nothing secret.
    runner = JobRunner(project=project, job_events_topic=f"projects/{project}/topics/dev-job-events",
                       log_dir=root / "vertex-jobs",
                       env={"PUBSUB_EMULATOR_HOST": emulator_hosts["PUBSUB_EMULATOR_HOST"]})
    runner.attach(fake)
    saved_host = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_host  # the fake writes batch prediction output to GCS
    try:
        with running_dev(root, port, env, log_name="e2e-vertex-dev.log") as dev:
            yield dev, fake, runner
    finally:
        runner.stop()
        server.shutdown()
        if saved_host is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved_host
        ARTIFACTS.mkdir(exist_ok=True)
        for log in (root / "vertex-jobs").glob("*.log"):
            (ARTIFACTS / f"e2e-vertex-{log.name}").write_bytes(log.read_bytes())


def _objects(gcs_host: str, prefix: str) -> list[str]:
    from google.cloud import storage as gcs

    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_host
    return [b.name for b in gcs.Client().list_blobs(BUCKET, prefix=prefix)]


def test_pipeline_runs_as_vertex_custom_jobs(vertex_dev, gcs_host: str):
    dev, fake, runner = vertex_dev
    mr = fresh_id("mr")
    dev.build(mr, "--limit", "300")
    started = dev.webhook(mr, delivery_id=fresh_id("delivery"))
    run = dev.api.wait(started["run_id"], timeout=600, interval=0.5)
    run_id = run["run_id"]
    assert run["status"] == "SUCCEEDED", json.dumps(run, indent=1)

    # Every stage was one CustomJob at the (fake) Vertex API, named and labelled per docs/architecture.md §4.
    created = [b for b in fake.created() if b["labels"]["run_id"] == run_id]
    assert [b["displayName"] for b in created] == [f"dev-{run_id}-{s}-a1" for s in ("etl", "train", "evaluate",
                                                                                     "deploy")]
    for body, step in zip(created, run["steps"], strict=True):
        container = body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
        assert container["imageUri"] == JOB_IMAGE
        assert container["args"][container["args"].index("--outputs") + 1].startswith(f"gs://{BUCKET}/lbtrain/runs/")
        assert body["jobSpec"]["serviceAccount"] == "lbtrain-jobs@e2e.iam.gserviceaccount.com"
        assert step["job"]["backend"] == "vertex" and step["job"]["id"] in fake.jobs
        assert fake.jobs[step["job"]["id"]]["state"] == "JOB_STATE_SUCCEEDED"
    wire = json.dumps(fake.requests)
    assert TOKEN not in wire and SECRET not in wire

    # Completion came from log sink entries (RUNNING then SUCCEEDED for each job).
    ids = {s["job"]["id"] for s in run["steps"]}
    seen = [(e["resource"]["labels"]["job_id"], e["textPayload"]) for e in runner.sink_entries
            if e["resource"]["labels"]["job_id"] in ids]
    assert len(seen) == 8 and all(text in ("Job is running.", "Job completed successfully.") for _, text in seen)

    # Artifacts are objects on GCS, not local files.
    names = _objects(gcs_host, f"lbtrain/runs/{run_id}/")
    for stage in ("etl", "train", "evaluate", "deploy"):
        assert f"lbtrain/runs/{run_id}/{stage}/a1/outputs.json" in names, names
    assert any(n.startswith(f"lbtrain/runs/{run_id}/train/a1/model/") for n in names)
    assert not (dev.root / "artifacts").exists()

    # Labelbox saw the run's statuses and one prediction upload.
    assert [s["status"] for s in dev.statuses(mr)][-1] == "COMPLETE"
    assert len(list((dev.model_run_dir(mr) / "predictions").glob("*.ndjson"))) == 1
    deployment: dict[str, Any] = run["deployment"]
    assert deployment["deployed"] is True, deployment

    # Deployed on Vertex: uploaded to the Model Registry with the serving image and the trained model
    # directory on GCS, and serving all traffic of the model type's endpoint.
    models = [m for m in fake.table("models").values() if m.get("labels", {}).get("run_id") == run_id]
    assert len(models) == 1, models
    assert models[0]["containerSpec"]["imageUri"] == SERVING_IMAGE
    assert models[0]["artifactUri"].startswith(f"gs://{BUCKET}/lbtrain/runs/{run_id}/train/a1/model")
    endpoints = list(fake.table("endpoints").values())
    assert len(endpoints) == 1 and endpoints[0]["displayName"] == "dev-text_single_classification"
    deployed = endpoints[0]["deployedModels"]
    assert [m["model"].rsplit("/", 1)[-1] for m in deployed] == [models[0]["name"].rsplit("/", 1)[-1]]
    assert list(endpoints[0]["trafficSplit"].values()) == [100]


def test_cancel_reaches_the_vertex_job(vertex_dev):
    dev, fake, runner = vertex_dev
    mr = fresh_id("mr")
    dev.build(mr, "--limit", "300")
    runner.hold_stages.add("train")  # the train job stays RUNNING until cancelled
    try:
        _cancel_while_training(dev, fake, mr)
    finally:
        runner.hold_stages.discard("train")


def _cancel_while_training(dev: Dev, fake: FakeVertex, mr: str) -> None:
    run_id = dev.webhook(mr, delivery_id=fresh_id("delivery"))["run_id"]

    def train_running() -> dict[str, Any] | None:
        step = dev.api.get_run(run_id)["steps"][1]
        return step if step["state"] == "RUNNING" and (step.get("job") or {}).get("id") else None

    deadline = time.monotonic() + 120
    while (step := train_running()) is None:
        assert time.monotonic() < deadline, dev.api.get_run(run_id)
        time.sleep(0.2)
    dev.api.cancel(run_id)
    run = dev.api.wait(run_id, timeout=120, interval=0.5)
    assert run["status"] == "CANCELLED", json.dumps(run, indent=1)
    assert any(p == "POST" and path.endswith(f"/customJobs/{step['job']['id']}:cancel")
               for p, path, _ in fake.requests)
    assert fake.jobs[step["job"]["id"]]["state"] == "JOB_STATE_CANCELLED"
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED", "CANCELLED", "PENDING", "PENDING"]


def test_automl_image_training_on_vertex(vertex_dev):
    """MODEL_OPTIONS makes image_single_classification train with AutoML Image: the train job imports the
    snapshot into a Vertex dataset and runs the training pipeline, evaluate runs a batch prediction and
    scores its output, deploy puts the AutoML model on an endpoint (no upload, no serving image)."""
    from tests.fakes import vertex_automl

    dev, fake, runner = vertex_dev
    mr = fresh_id("mr")
    dev.build(mr, "--limit", "200", model_type="image_single_classification")
    rows = [json.loads(line) for line in (dev.model_run_dir(mr) / "export.ndjson").read_text().splitlines()]
    test_rows = [r["data_row"]["id"] for r in rows
                 if r["experiments"][next(iter(r["experiments"]))]["runs"][mr]["split"] == "test"]
    # three test images predicted wrongly; pipeline and batch job end on their first read (through RUNNING):
    # the jobs poll every automl_poll_seconds (60)
    vertex_automl.configure(fake, wrong=test_rows[:3], progress=False)
    started = dev.webhook(mr, delivery_id=fresh_id("delivery"), model_type="image_single_classification")
    run = dev.api.wait(started["run_id"], timeout=600, interval=0.5)
    run_id = run["run_id"]
    assert run["status"] == "SUCCEEDED", json.dumps(run, indent=1)

    pipelines = [p for p in fake.table("automl_pipelines").values() if run_id in p.get("displayName", "")]
    assert len(pipelines) == 1, pipelines
    task = pipelines[0]["trainingTaskInputs"]
    assert int(task["budgetMilliNodeHours"]) == 8000 and task["modelType"] == "CLOUD"
    assert [b for b in fake.table("automl_batch_jobs").values() if run_id in b.get("displayName", "")]
    metrics = run["metrics"]
    assert metrics["test_size"] == len(test_rows)
    assert metrics["accuracy"] == pytest.approx(1 - 3 / len(test_rows))
    assert len(list((dev.model_run_dir(mr) / "predictions").glob("*.ndjson"))) == 1

    # The AutoML model itself is deployed: nothing uploaded with our serving image for this run.
    uploads = [b for m, p, b in fake.requests if m == "POST" and p.endswith("/models:upload")
               and run_id in json.dumps(b)]
    assert uploads == []
    endpoint = next(e for e in fake.table("endpoints").values()
                    if e["displayName"] == "dev-image_single_classification")
    deployed = endpoint["deployedModels"]
    assert len(deployed) == 1 and "automaticResources" in deployed[0]
    assert run["deployment"]["deployed"] is True


def test_a_failing_vertex_job_reports_its_own_reason(vertex_dev):
    dev, fake, runner = vertex_dev
    mr = fresh_id("mr")
    dev.build(mr, "--limit", "9")  # too few examples per class for the splits
    run_id = dev.webhook(mr, delivery_id=fresh_id("delivery"))["run_id"]
    run = dev.api.wait(run_id, timeout=300, interval=0.5)
    assert run["status"] == "FAILED" and run["error"]["stage"] == "etl", run
    message = run["error"]["message"]
    assert "exited with a non-zero status of 1" in message  # what Vertex says …
    assert "example" in message and "split" in message, message  # … and why, from the job's error.json
    failed = [s for s in dev.statuses(mr) if s["status"] == "FAILED"]
    assert failed and "example" in failed[-1]["error_message"]
