"""VertexBackend with the real google-cloud-aiplatform client against a local fake of Vertex's REST
API: what crosses the wire is asserted, nothing is patched."""

from __future__ import annotations

import pytest

from lbtrain.adapters.backend import JobSpec
from lbtrain.adapters.vertex_backend import Machine, VertexBackend, label_value, machine_for
from lbtrain.config import Config
from lbtrain.domain import job_name


def make_backend(endpoint: str, **overrides) -> VertexBackend:
    values = dict(project="proj-1", region="europe-west4", deployment_name="prod", artifact_root="gs://bkt/lbtrain",
                  job_image="europe-docker.pkg.dev/proj-1/lbtrain/jobs-cpu:abc",
                  job_image_gpu="europe-docker.pkg.dev/proj-1/lbtrain/jobs-gpu:abc",
                  job_service_account="lbtrain-jobs@proj-1.iam.gserviceaccount.com",
                  vertex_api_endpoint=endpoint, api_token="never-sent-token-123", labelbox_webhook_secret="never-sent")
    return VertexBackend(Config(**{**values, **overrides}))


def spec(run_id: str = "0123456789abcdef", stage: str = "train", attempt: int = 2,
         model_type: str = "text_single_classification") -> JobSpec:
    name = job_name("prod", run_id, stage, attempt)
    out = f"gs://bkt/lbtrain/runs/{run_id}/{stage}/a{attempt}"
    return JobSpec(name=name, run_id=run_id, stage=stage, attempt=attempt, model_type=model_type,
                   inputs_uri=f"gs://bkt/lbtrain/runs/{run_id}/inputs/{stage}-a{attempt}.json", outputs_uri=out,
                   labels={"deployment": "prod", "run_id": run_id, "stage": stage, "attempt": str(attempt)})


def test_submit_sends_the_job_we_mean(vertex):
    fake, endpoint = vertex
    backend = make_backend(endpoint)
    ref = backend.submit(spec())
    body = fake.created()[0]
    assert body["displayName"] == "prod-0123456789abcdef-train-a2"
    assert body["labels"] == {"deployment": "prod", "run_id": "0123456789abcdef", "stage": "train", "attempt": "2"}
    pool = body["jobSpec"]["workerPoolSpecs"][0]
    assert pool["machineSpec"] == {"machineType": "n1-standard-4"}
    assert int(pool["replicaCount"]) == 1
    container = pool["containerSpec"]
    assert container["imageUri"] == "europe-docker.pkg.dev/proj-1/lbtrain/jobs-cpu:abc"
    assert container["args"] == ["--run-id", "0123456789abcdef", "--stage", "train", "--attempt", "2", "--inputs",
                                 "gs://bkt/lbtrain/runs/0123456789abcdef/inputs/train-a2.json", "--outputs",
                                 "gs://bkt/lbtrain/runs/0123456789abcdef/train/a2"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DEPLOYMENT_NAME"] == "prod" and env["ARTIFACT_ROOT"] == "gs://bkt/lbtrain"
    assert "API_TOKEN" not in env and "LABELBOX_WEBHOOK_SECRET" not in env
    assert body["jobSpec"]["serviceAccount"] == "lbtrain-jobs@proj-1.iam.gserviceaccount.com"
    assert body["jobSpec"]["scheduling"]["timeout"] == "86400s"  # a hung job is stopped after 24 h
    assert body["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"] == "gs://bkt/lbtrain/runs/0123456789abcdef/train/a2/vertex"
    assert "never-sent" not in str(fake.requests)
    assert ref.backend == "vertex" and ref.id in fake.jobs and ref.name == body["displayName"]
    assert "console.cloud.google.com" in ref.url and ref.id in ref.url


def test_the_modelrun_job_runs_its_own_module_on_a_small_machine(vertex):
    fake, endpoint = vertex
    backend = make_backend(endpoint)
    backend.submit(JobSpec(**{**spec(stage="modelrun", attempt=1).__dict__, "module": "jobs.modelrun"}))
    backend.submit(spec(stage="etl", attempt=1))
    modelrun, etl = (b["jobSpec"]["workerPoolSpecs"][0] for b in fake.created())
    assert modelrun["containerSpec"]["command"] == ["python", "-m", "jobs.modelrun"]  # the image's other program
    assert modelrun["containerSpec"]["args"][:4] == ["--run-id", "0123456789abcdef", "--stage", "modelrun"]
    assert modelrun["machineSpec"] == {"machineType": "n1-standard-2"}
    assert fake.created()[0]["jobSpec"]["scheduling"]["timeout"] == "21600s"
    assert "command" not in etl["containerSpec"]  # the stages keep the entrypoint (jobs.main)


def test_state_is_read_from_vertex(vertex):
    fake, endpoint = vertex
    backend = make_backend(endpoint)
    ref = backend.submit(spec())
    assert backend.get_status(ref.id).state == "PENDING"
    fake.set_state(ref.id, "RUNNING")
    assert backend.get_status(ref.id).state == "RUNNING" and not backend.get_status(ref.id).terminal
    fake.set_state(ref.id, "FAILED", error="The replica workerpool0-0 exited with a non-zero status of 1.")
    status = backend.get_status(ref.id)
    assert status.state == "FAILED" and status.terminal and "non-zero status" in status.error
    for state in ("SUCCEEDED", "CANCELLED", "EXPIRED", "PARTIALLY_SUCCEEDED"):
        fake.set_state(ref.id, state)
        assert backend.get_status(ref.id).state == state
    assert backend.get_status("999999").state == "FAILED"  # unknown job: 404 at the wire


def test_a_launcher_that_crashed_after_submitting_finds_the_job(vertex):
    fake, endpoint = vertex
    first = make_backend(endpoint).submit(spec())
    # A new process (fresh client) submits the same step again: it finds the job by name instead.
    again = make_backend(endpoint).submit(spec())
    assert again == first and len(fake.created()) == 1
    assert make_backend(endpoint).find_by_name(spec().name) == first
    assert make_backend(endpoint).find_by_name(spec(attempt=3).name) is None


def test_cancel(vertex):
    fake, endpoint = vertex
    backend = make_backend(endpoint)
    ref = backend.submit(spec())
    fake.set_state(ref.id, "RUNNING")
    backend.cancel(ref.id)
    assert any(p.endswith(f"/customJobs/{ref.id}:cancel") for m, p, _ in fake.requests if m == "POST")
    fake.set_state(ref.id, "CANCELLED")
    backend.cancel(ref.id)  # already over: no second cancel request
    assert sum(p.endswith(":cancel") for m, p, _ in fake.requests if m == "POST") == 1


def test_gpu_machine_uses_the_gpu_image(vertex):
    fake, endpoint = vertex
    machines = '{"image_*/train": {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4", ' \
               '"accelerator_count": 1}}'
    backend = make_backend(endpoint, job_machines=machines)
    backend.submit(spec(model_type="image_single_classification"))
    pool = fake.created()[0]["jobSpec"]["workerPoolSpecs"][0]
    from google.cloud.aiplatform_v1.types import AcceleratorType

    t4 = AcceleratorType.NVIDIA_TESLA_T4
    assert pool["machineSpec"]["acceleratorType"] in (t4.name, t4.value)  # the REST body may use either
    assert int(pool["machineSpec"]["acceleratorCount"]) == 1
    assert pool["containerSpec"]["imageUri"].endswith("jobs-gpu:abc")


def test_machine_table():
    cfg = Config()
    assert machine_for(cfg, "text_single_classification", "train") == Machine("n1-standard-4")
    assert machine_for(cfg, "image_multi_classification", "train") == Machine("n1-standard-8")
    assert machine_for(cfg, "image_multi_classification", "etl") == Machine("n1-standard-4")
    custom = Config(job_machines='{"ner": {"machine_type": "e2-standard-2"}, "*/deploy": {"machine_type": "e2-small"}}')
    assert machine_for(custom, "ner", "train") == Machine("e2-standard-2")
    assert machine_for(custom, "ner", "deploy") == Machine("e2-standard-2")  # no wildcard beats a named type
    assert machine_for(custom, "text_single_classification", "deploy") == Machine("e2-small")
    with pytest.raises(ValueError, match="not JSON"):
        machine_for(Config(job_machines="{"), "ner", "train")
    with pytest.raises(ValueError, match="unknown keys"):
        machine_for(Config(job_machines='{"*": {"gpus": 2}}'), "ner", "train")


def test_label_values_follow_vertex_rules():
    assert label_value("Prod_Deployment.1") == "prod_deployment-1"
    assert len(label_value("x" * 100)) == 63


def test_missing_image_is_a_clear_error(vertex):
    _, endpoint = vertex
    backend = make_backend(endpoint, job_image="", job_image_gpu="")
    with pytest.raises(ValueError, match="JOB_IMAGE"):
        backend.submit(spec())


def test_automl_types_drive_vertex_from_a_small_machine(vertex):
    fake, endpoint = vertex
    options = '{"bounding_box": {"training": "automl"}}'
    backend = make_backend(endpoint, model_options=options)
    backend.submit(spec(model_type="bounding_box", stage="train"))
    body = fake.created()[-1]
    assert body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"] == {"machineType": "n1-standard-2"}
    assert body["jobSpec"]["scheduling"]["timeout"] == f"{72 * 3600}s"
    cfg = backend.config
    assert machine_for(cfg, "bounding_box", "etl").machine_type == "n1-standard-4"
    assert machine_for(cfg, "image_single_classification", "train").machine_type == "n1-standard-8"
    overridden = cfg.with_overrides(job_machines='{"bounding_box/train": {"machine_type": "n1-highmem-2", '
                                                 '"max_hours": 1.5}}')
    assert machine_for(overridden, "bounding_box", "train") == Machine("n1-highmem-2", max_hours=1.5)
