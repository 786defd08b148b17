"""The Vertex fakes are as strict as the real API, bad days included: wrong requests are refused with
Vertex's error shape, long-running operations stay pending until the real client's polling completes
them, and injected failures (quota, unavailable, internal, stockout, partial success) reach lbtrain the
way Vertex reports them. The real google-cloud-aiplatform client (REST) runs unpatched."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import requests
from google.api_core import exceptions as gexc

from lbtrain.adapters import vertex_client
from lbtrain.adapters.backend import JobSpec
from lbtrain.adapters.vertex_backend import VertexBackend
from lbtrain.config import Config
from lbtrain.domain import job_name
from tests.fakes import vertex_models
from tests.fakes.vertex import INTERNAL, JOB_INTERNAL, QUOTA, STOCKOUT, UNAVAILABLE, Failure, FakeVertex

PROJECT, REGION = "proj-1", "europe-west4"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
V1 = f"/v1/{PARENT}"
OD = "gs://google-cloud-aiplatform/schema/trainingjob/definition/automl_image_object_detection_1.0.0.yaml"
CLS = "gs://google-cloud-aiplatform/schema/trainingjob/definition/automl_image_classification_1.0.0.yaml"
IMAGE = "europe-docker.pkg.dev/proj-1/lbtrain/jobs-cpu:abc"


def fresh() -> str:
    return uuid.uuid4().hex[:12]


def config(endpoint: str, **overrides: Any) -> Config:
    return Config(**{"project": PROJECT, "region": REGION, "deployment_name": "prod",
                     "artifact_root": "gs://bkt/lbtrain", "job_image": IMAGE, "vertex_api_endpoint": endpoint,
                     **overrides})


def post(endpoint: str, path: str, body: Any) -> requests.Response:
    return requests.post(f"{endpoint}{path}", json=body, timeout=10)


def job_body(**overrides: Any) -> dict[str, Any]:
    return {"displayName": f"job-{fresh()}", "jobSpec": {"workerPoolSpecs": [{
        "machineSpec": {"machineType": "n1-standard-4"}, "replicaCount": "1",
        "containerSpec": {"imageUri": IMAGE, "args": ["--x"]}}]}, **overrides}


def spec(run_id: str) -> JobSpec:
    return JobSpec(name=job_name("prod", run_id, "train", 1), run_id=run_id, stage="train", attempt=1,
                   model_type="text_single_classification", inputs_uri=f"gs://bkt/lbtrain/runs/{run_id}/in.json",
                   outputs_uri=f"gs://bkt/lbtrain/runs/{run_id}/train/a1",
                   labels={"deployment": "prod", "run_id": run_id, "stage": "train", "attempt": "1"})


def _model(fake: FakeVertex, **extra: Any) -> dict[str, Any]:
    return vertex_models.add_model(fake, PARENT, {"displayName": f"m-{fresh()}", **extra})


# --- strict requests ------------------------------------------------------------------------------


def _dataset(fake: FakeVertex) -> str:
    dataset_id = fake.new_id()
    fake.table("automl_datasets")[dataset_id] = {"name": f"{PARENT}/datasets/{dataset_id}", "displayName": "d"}
    return dataset_id


INVALID: dict[str, tuple[str, Any, str]] = {
    # what lbtrain used to send: AutoMlImageObjectDetectionInputs.ModelType has no CLOUD
    "detection modelType CLOUD": ("/trainingPipelines", lambda d: {
        "displayName": "p", "trainingTaskDefinition": OD, "inputDataConfig": {"datasetId": d},
        "trainingTaskInputs": {"modelType": "CLOUD", "budgetMilliNodeHours": 20000}}, "Invalid enum value CLOUD"),
    "classification task input unknown": ("/trainingPipelines", lambda d: {
        "displayName": "p", "trainingTaskDefinition": CLS, "inputDataConfig": {"datasetId": d},
        "trainingTaskInputs": {"modelType": "CLOUD", "budgetNodeHours": 8}}, "budgetNodeHours"),
    "unknown task definition": ("/trainingPipelines", lambda d: {
        "displayName": "p", "trainingTaskDefinition": "gs://x/automl_video_1.0.0.yaml",
        "inputDataConfig": {"datasetId": d}, "trainingTaskInputs": {}}, "not a supported schema"),
    "pipeline without task inputs": ("/trainingPipelines", lambda d: {
        "displayName": "p", "trainingTaskDefinition": CLS, "inputDataConfig": {"datasetId": d}},
        "training_pipeline.training_task_inputs; Message: Required field is not set."),
    "custom job unknown field": ("/customJobs", lambda d: job_body(jobSpecs={}), 'no field named "jobSpecs"'),
    "custom job without display name": ("/customJobs", lambda d: {**job_body(), "displayName": ""},
                                        "custom_job.display_name; Message: Required field is not set."),
    "container without image": ("/customJobs", lambda d: job_body(jobSpec={"workerPoolSpecs": [
        {"machineSpec": {"machineType": "n1-standard-4"}, "replicaCount": "1", "containerSpec": {"args": []}}]}),
        "custom_job.job_spec.worker_pool_specs[0].container_spec.image_uri"),
    "bad accelerator enum": ("/customJobs", lambda d: job_body(jobSpec={"workerPoolSpecs": [{
        "machineSpec": {"machineType": "g2-standard-8", "acceleratorType": "NVIDIA_L4_GPU"}, "replicaCount": "1",
        "containerSpec": {"imageUri": IMAGE}}]}), "Invalid enum value NVIDIA_L4_GPU"),
    "batch job without output config": ("/batchPredictionJobs", lambda d: {
        "displayName": "b", "model": "m", "inputConfig": {"instancesFormat": "jsonl",
                                                          "gcsSource": {"uris": ["gs://b/i.jsonl"]}}},
        "batch_prediction_job.output_config; Message: Required field is not set."),
    "dataset import without schema": ("/datasets/1:import", lambda d: {
        "importConfigs": [{"gcsSource": {"uris": ["gs://b/i.jsonl"]}}]}, "import_configs[0].import_schema_uri"),
    "upload without display name": ("/models:upload", lambda d: {"model": {"artifactUri": "gs://b/m"}},
                                    "model.display_name; Message: Required field is not set."),
    "endpoint unknown field": ("/endpoints", lambda d: {"displayName": "e", "trafficSplit": {"0": 100},
                                                        "machineType": "n1"}, 'no field named "machineType"'),
    "uppercase label value": ("/customJobs", lambda d: job_body(labels={"run_id": "Run-1"}),
                              "Label 'run_id': 'Run-1' is invalid"),
    "label value too long": ("/endpoints", lambda d: {"displayName": "e", "labels": {"model_type": "x" * 64}},
                             "endpoint.labels"),
    "nested model label key": ("/trainingPipelines", lambda d: {
        "displayName": "p", "trainingTaskDefinition": CLS, "inputDataConfig": {"datasetId": d},
        "trainingTaskInputs": {"modelType": "CLOUD"}, "modelToUpload": {"displayName": "m", "labels": {"1st": "a"}}},
        "training_pipeline.model_to_upload.labels"),
    "display name too long": ("/batchPredictionJobs", lambda d: {
        "displayName": "b" * 129, "model": "m", "inputConfig": {"instancesFormat": "jsonl"},
        "outputConfig": {"predictionsFormat": "jsonl"}}, "up to 128 characters"),
    "deploy without model resources type": ("/endpoints/1:deployModel", lambda d: {
        "deployedModel": {"model": "m", "dedicatedResources": {"minReplicaCount": 1}}},
        "deployed_model.dedicated_resources.machine_spec"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_a_request_vertex_would_refuse_is_refused_with_its_error_shape(vertex, case):
    fake, endpoint = vertex
    suffix, body, expected = INVALID[case]
    before = {family: dict(table) for family, table in fake.resources.items()}
    answer = post(endpoint, V1 + suffix, body(_dataset(fake)))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert expected in error["message"]
    (detail,) = error["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest" and detail["fieldViolations"]
    after = {family: dict(table) for family, table in fake.resources.items()}
    assert {k: v for k, v in after.items() if k != "automl_datasets"} == \
        {k: v for k, v in before.items() if k != "automl_datasets"} and not fake.jobs  # nothing created


def test_the_real_client_gets_invalid_argument_for_the_old_detection_request(vertex):
    """The request jobs/automl.py sent before: the real client raises BadRequest naming the enum."""
    fake, endpoint = vertex
    from google.cloud.aiplatform.compat.types import training_pipeline as gca_pipeline
    from google.protobuf import json_format, struct_pb2

    from jobs import automl

    aip = vertex_client.aiplatform(config(endpoint))
    pipeline = gca_pipeline.TrainingPipeline(
        display_name=f"p-{fresh()}", training_task_definition=automl.TRAINING_SCHEMA["object_detection"],
        training_task_inputs=json_format.ParseDict({"modelType": "CLOUD", "budgetMilliNodeHours": 20000},
                                                   struct_pb2.Value()),
        input_data_config=gca_pipeline.InputDataConfig(dataset_id=_dataset(fake)))
    with pytest.raises(gexc.BadRequest, match="Invalid enum value CLOUD"):
        automl._pipeline_client(aip).create_training_pipeline(parent=PARENT, training_pipeline=pipeline)
    assert not fake.table("automl_pipelines")


def test_an_automl_model_cannot_be_deployed_on_dedicated_machines(vertex):
    fake, endpoint = vertex
    model = _model(fake)  # no container: automatic resources only
    aip = vertex_client.aiplatform(config(endpoint))
    target = aip.Endpoint.create(display_name=f"e-{fresh()}")
    answer = post(endpoint, f"/v1/{target.resource_name}:deployModel", {"deployedModel": {
        "model": model["name"], "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-4"},
                                                       "minReplicaCount": 1}}})
    assert answer.status_code == 400 and "does not support DEDICATED_RESOURCES" in answer.json()["error"]["message"]
    # the SDK, given a machine type, asks for what the model supports (automatic resources)
    target.deploy(aip.Model(model["name"]), machine_type="n1-standard-4", min_replica_count=1, max_replica_count=1)
    (deployed,) = target.list_models()
    assert deployed.automatic_resources.min_replica_count == 1


# --- long-running operations --------------------------------------------------------------------


def test_pending_operations_are_polled_by_the_real_client_where_it_polls(vertex):
    fake, endpoint = vertex
    fake.lro_polls = 1  # each operation answers done: false once
    model = _model(fake)
    aip = vertex_client.aiplatform(config(endpoint))
    created = aip.Endpoint.create(display_name=f"e-{fresh()}")
    created.deploy(aip.Model(model["name"]), min_replica_count=1, max_replica_count=1)
    polls = [p for m, p, _ in fake.requests if m == "GET" and "/operations/" in p]
    # the REST transport polls GET /ui/{name} (the first http rule of GetOperation): per operation
    # once while pending, once done
    assert len(polls) == 4 and len(set(polls)) == 2 and all(p.startswith(f"/ui/{PARENT}/endpoints/") for p in polls)
    assert [d["model"] for d in fake.table("endpoints")[created.name]["deployedModels"]] == [model["name"]]
    ops = list(fake.operations.values())
    assert all(op["done"] for op in ops) and not fake.pending
    assert [op["metadata"]["@type"].rsplit(".", 1)[-1] for op in ops] == [
        "CreateEndpointOperationMetadata", "DeployModelOperationMetadata"]
    assert all(set(op["metadata"]["genericMetadata"]) == {"createTime", "updateTime"} for op in ops)


def test_an_operation_completes_on_demand_and_has_no_effect_before(vertex):
    fake, endpoint = vertex
    fake.lro_polls = 10 ** 6
    answer = post(endpoint, V1 + "/endpoints", {"displayName": f"e-{fresh()}"})
    op = answer.json()
    assert op["done"] is False and "response" not in op and not fake.table("endpoints")
    assert requests.get(f"{endpoint}/v1/{op['name']}", timeout=10).json()["done"] is False
    fake.complete_operations()
    done = requests.get(f"{endpoint}/ui/{op['name']}", timeout=10).json()
    assert done["done"] is True and done["response"]["@type"].endswith(".Endpoint")
    assert done["response"]["name"] in {e["name"] for e in fake.table("endpoints").values()}


def test_a_client_waiting_on_a_pending_operation_returns_when_it_completes(vertex):
    fake, endpoint = vertex
    fake.lro_polls = 10 ** 6
    aip = vertex_client.aiplatform(config(endpoint))
    name = f"e-{fresh()}"
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(aip.Endpoint.create(display_name=name)), daemon=True)
    waiter.start()
    waiter.join(1.5)
    assert waiter.is_alive() and not result  # still polling
    fake.complete_operations()
    waiter.join(30)
    assert result and result[0].display_name == name


# --- injected failures --------------------------------------------------------------------------


def test_quota_exceeded_on_create_is_a_429_resource_exhausted(vertex):
    fake, endpoint = vertex
    fake.inject("customJobs", QUOTA, times=1)
    aip = vertex_client.aiplatform(config(endpoint))
    job = aip.CustomJob(display_name=f"j-{fresh()}", worker_pool_specs=[{
        "machine_spec": {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1},
        "replica_count": 1, "container_spec": {"image_uri": IMAGE}}], staging_bucket="gs://bkt/x")
    with pytest.raises(gexc.TooManyRequests) as raised:
        job.submit()
    assert "The following quota metrics exceed quota limits: aiplatform.googleapis.com/" \
           "custom_model_training_nvidia_l4_gpus" in str(raised.value)
    assert not fake.jobs
    job.submit()  # injected once: the next create goes through
    assert len(fake.jobs) == 1


def test_unavailable_and_internal_errors_on_create_surface_as_their_exceptions(vertex):
    fake, endpoint = vertex
    backend = VertexBackend(config(endpoint))
    fake.inject("customJobs", UNAVAILABLE)
    with pytest.raises(gexc.ServiceUnavailable, match="currently unavailable"):
        backend.submit(spec(fresh()))
    fake.inject("customJobs", INTERNAL)
    with pytest.raises(gexc.InternalServerError, match="Internal error encountered"):
        backend.submit(spec(fresh()))
    assert not fake.jobs  # creates are not retried by the client


def test_a_503_on_a_read_is_retried_by_the_client(vertex):
    """aiplatform's resource GETs carry api_core's default Retry (transient: 429, 500, 503)."""
    fake, endpoint = vertex
    backend = VertexBackend(config(endpoint))
    ref = backend.submit(spec(fresh()))
    fake.inject("GET customJobs", UNAVAILABLE)
    before = len(fake.requests)
    assert backend.get_status(ref.id).state == "PENDING"
    gets = [p for m, p, _ in fake.requests[before:] if m == "GET"]
    assert gets[0] == gets[1] == f"/v1/{PARENT}/customJobs/{ref.id}"  # refused once, asked again


def test_a_stocked_out_job_goes_pending_running_then_failed_with_code_8(vertex):
    fake, endpoint = vertex
    fake.inject("customJobs", STOCKOUT)
    backend = VertexBackend(config(endpoint))
    ref = backend.submit(spec(fresh()))
    status = backend.get_status(ref.id)
    while not status.terminal:
        status = backend.get_status(ref.id)
    assert status.state == "FAILED"
    assert status.error.startswith("Resources are insufficient in region: us-central1. Please try a different")
    job = fake.jobs[ref.id]
    assert [s for n, s in fake.history if n == job["name"]] == [
        "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_FAILED"]
    assert job["error"]["code"] == 8 and {"startTime", "endTime"} <= set(job)
    other = backend.submit(spec(fresh()))  # only the next job was fated
    assert [backend.get_status(other.id).state for _ in range(3)] == ["PENDING"] * 3


def test_injected_operation_failure_fails_the_operation_the_client_waits_on(vertex):
    fake, endpoint = vertex
    fake.inject("endpoints", Failure(13, "Internal error while creating the endpoint."))
    aip = vertex_client.aiplatform(config(endpoint))
    with pytest.raises(gexc.GoogleAPICallError, match="Internal error while creating the endpoint"):
        aip.Endpoint.create(display_name=f"e-{fresh()}")
    assert not fake.table("endpoints")
    assert JOB_INTERNAL.http == 0 and JOB_INTERNAL.code == 13  # the job-ending internal error


def test_the_job_runner_ends_a_fated_job_as_vertex_reports_it(vertex, emulator_hosts, tmp_path):
    """With the local job runner attached (the stack's JOB_BACKEND=vertex), a fated CustomJob starts no
    process: it goes RUNNING and ends as injected, and the log sink publishes both."""
    import time

    from google.cloud import pubsub_v1

    from tests.fakes.vertex_runner import JobRunner

    fake, endpoint = vertex
    project = f"p-{fresh()}"
    topic = f"projects/{project}/topics/job-events"
    pubsub_v1.PublisherClient().create_topic(name=topic)
    runner = JobRunner(project=project, job_events_topic=topic, log_dir=tmp_path / "jobs")
    runner.attach(fake)
    fake.inject("customJobs", STOCKOUT)
    try:
        ref = VertexBackend(config(endpoint)).submit(spec(fresh()))
        deadline = time.monotonic() + 30
        while len(runner.sink_entries) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [e["textPayload"] for e in runner.sink_entries] == ["Job is running.", "Job failed."]
        assert runner.sink_entries[-1]["severity"] == "ERROR"
        assert fake.jobs[ref.id]["error"] == STOCKOUT.error() and not runner.procs
    finally:
        runner.stop()


def test_a_create_error_callback_decides_by_the_body(vertex):
    """The callback form of injection: refuse creates by what they ask for (here: an L4 GPU)."""
    fake, endpoint = vertex

    def quota_for_l4(body: dict[str, Any]) -> tuple[int, Any] | None:
        machine = body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]
        return QUOTA.answer() if machine.get("acceleratorType") in ("NVIDIA_L4", 11) else None  # enum name or number

    fake.create_error = quota_for_l4
    gpu = config(endpoint, job_machines='{"*": {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", '
                                        '"accelerator_count": 1}}', job_image_gpu=IMAGE)
    with pytest.raises(gexc.TooManyRequests, match="custom_model_training_nvidia_l4_gpus"):
        VertexBackend(gpu).submit(spec(fresh()))
    assert VertexBackend(config(endpoint)).submit(spec(fresh())).id in fake.jobs
