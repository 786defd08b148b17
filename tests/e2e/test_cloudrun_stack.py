"""End to end with STAGE_BACKENDS mixing Cloud Run jobs and Vertex CustomJobs: `lbtrain dev` runs etl,
evaluate and deploy as executions of Cloud Run jobs (the real run_v2 client against the fake Cloud Run Admin
API) and train as a CustomJob (aiplatform against the fake Vertex); each fake runs its jobs as local
processes with the real job code and reports their ends as the log sink does. Deploy serves the champion
as a Cloud Run revision (SERVING_BACKENDS). Artifacts on a GCS emulator."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from lbtrain.emulators import free_port
from tests.conftest import ARTIFACTS, fresh_id, storage_emulator
from tests.e2e.conftest import SECRET, TOKEN, Dev, dev_env, running_dev
from tests.fakes.cloud_run_admin import FakeCloudRun
from tests.fakes.cloud_run_admin import serve as serve_cloud_run
from tests.fakes.cloud_run_runner import ExecutionRunner
from tests.fakes.vertex import FakeVertex
from tests.fakes.vertex import serve as serve_vertex
from tests.fakes.vertex_runner import JobRunner

BUCKET = "lbtrain-e2e-cloudrun"
JOB_IMAGE = "us-docker.pkg.dev/e2e/lbtrain/jobs-cpu:e2e"
SERVING_IMAGE = "us-docker.pkg.dev/e2e/lbtrain/serving:e2e"
STAGES = {"*/etl": "cloudrun", "*/train": "vertex", "*/evaluate": "cloudrun", "*/deploy": "cloudrun"}


@pytest.fixture(scope="module")
def mixed_dev(emulator_hosts: dict[str, str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dev, FakeCloudRun, FakeVertex, str]]:
    root = tmp_path_factory.mktemp("e2e-cloudrun")
    crfake, vfake = FakeCloudRun(), FakeVertex()
    crserver, vserver = serve_cloud_run(crfake), serve_vertex(vfake)
    with storage_emulator(BUCKET) as gcs_host:
        port = free_port()
        env = dev_env(root, port, emulator_hosts, JOB_BACKEND="vertex", STAGE_BACKENDS=json.dumps(STAGES),
                      SERVING_BACKENDS='{"*": "cloudrun"}', JOB_IMAGE=JOB_IMAGE, SERVING_IMAGE=SERVING_IMAGE,
                      REGION="us-central1", ARTIFACT_ROOT=f"gs://{BUCKET}/lbtrain", STORAGE_EMULATOR_HOST=gcs_host,
                      VERTEX_API_ENDPOINT=f"http://127.0.0.1:{vserver.server_address[1]}",
                      CLOUD_RUN_API_ENDPOINT=f"http://127.0.0.1:{crserver.server_address[1]}",
                      JOB_SERVICE_ACCOUNT="lbtrain-jobs@e2e.iam.gserviceaccount.com")
        project = env["GOOGLE_CLOUD_PROJECT"]
        topic = f"projects/{project}/topics/dev-job-events"
        extra = {"PUBSUB_EMULATOR_HOST": emulator_hosts["PUBSUB_EMULATOR_HOST"]}
        crrunner = ExecutionRunner(project=project, job_events_topic=topic, log_dir=root / "cloudrun-jobs", env=extra)
        crrunner.attach(crfake)
        vrunner = JobRunner(project=project, job_events_topic=topic, log_dir=root / "vertex-jobs", env=extra)
        vrunner.attach(vfake)
        saved = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = gcs_host
        try:
            with running_dev(root, port, env, log_name="e2e-cloudrun-dev.log") as dev:
                yield dev, crfake, vfake, gcs_host
        finally:
            crrunner.stop()
            vrunner.stop()
            crserver.shutdown()
            vserver.shutdown()
            if saved is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = saved
            ARTIFACTS.mkdir(exist_ok=True)
            for log in [*(root / "cloudrun-jobs").glob("*.log"), *(root / "vertex-jobs").glob("*.log")]:
                (ARTIFACTS / f"e2e-cloudrun-{log.name}").write_bytes(log.read_bytes())


def test_stages_run_where_stage_backends_say_and_deploy_serves_on_cloud_run(mixed_dev):
    dev, crfake, vfake, _ = mixed_dev
    mr = fresh_id("mr")
    dev.build(mr, "--limit", "300")
    run = dev.api.wait(dev.webhook(mr, delivery_id=fresh_id("delivery"))["run_id"], timeout=600, interval=0.5)
    run_id = run["run_id"]
    assert run["status"] == "SUCCEEDED", json.dumps(run, indent=1)
    steps = {s["stage"]: s for s in run["steps"]}
    assert {k: s["job"]["backend"] for k, s in steps.items()} == {
        "etl": "cloudrun", "train": "vertex", "evaluate": "cloudrun", "deploy": "cloudrun"}
    assert [b["labels"]["stage"] for b in vfake.created() if b["labels"]["run_id"] == run_id] == ["train"]

    # Each Cloud Run stage: an execution of its stage job, with the job contract's arguments; the jobs were
    # created once, from the jobs image, as the jobs service account.
    executions = {e["template"]["containers"][0]["args"][3]: e for e in crfake.executions.values()
                  if run_id in e["template"]["containers"][0]["args"]}
    assert set(executions) == {"etl", "evaluate", "deploy"}
    for stage, execution in executions.items():
        args = execution["template"]["containers"][0]["args"]
        assert args[args.index("--outputs") + 1] == f"gs://{BUCKET}/lbtrain/runs/{run_id}/{stage}/a1"
        assert execution.get("succeededCount") == 1
    evaluate_args = executions["evaluate"]["template"]["containers"][0]["args"]
    assert evaluate_args[evaluate_args.index("--model-sha256") + 1] == run["model_sha256"]
    for job in crfake.jobs.values():
        task = job["template"]["template"]
        assert task["containers"][0]["image"] == JOB_IMAGE
        assert task["serviceAccount"] == "lbtrain-jobs@e2e.iam.gserviceaccount.com"
    wire = json.dumps(crfake.requests)
    assert TOKEN not in wire and SECRET not in wire

    # Served on Cloud Run: a revision of the model type's service with the model digest, all traffic.
    (service,) = crfake.services.values()
    revision = service["template"]["revision"]
    assert revision.endswith(run_id.lower()) and service["trafficStatuses"][0]["percent"] == 100
    env = {e["name"]: e["value"] for e in service["template"]["containers"][0]["env"]}
    assert env["AIP_STORAGE_URI"].startswith(f"gs://{BUCKET}/lbtrain/runs/{run_id}/train/a1/model")
    assert env["LBTRAIN_MODEL_SHA256"] == run["model_sha256"]
    deployment = run["deployment"]
    assert deployment["deployed"] is True and deployment["endpoint"] == service["uri"] + "/predict"
    assert [s["status"] for s in dev.statuses(mr)][-1] == "COMPLETE"
