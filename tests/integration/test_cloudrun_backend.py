"""CloudRunBackend with the real google-cloud-run (run_v2, REST) client against a local fake of the Cloud
Run Admin API v2: what crosses the wire is asserted, nothing is patched."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lbtrain.adapters.backend import JobSpec
from lbtrain.adapters.cloudrun_backend import CloudRunBackend, Size, size_for
from lbtrain.adapters.dispatch_backend import DispatchBackend, backend_for, owner_of
from lbtrain.adapters.vertex_backend import Machine
from lbtrain.config import Config, from_env
from lbtrain.domain import job_name
from lbtrain.messages import parse_cloud_run_job_id
from tests.conftest import fresh_id
from tests.fakes.cloud_run_admin import FakeCloudRun, serve

IMAGE = "us-docker.pkg.dev/proj-1/lbtrain/jobs-cpu:abc"


@pytest.fixture
def cloudrun() -> Iterator[tuple[FakeCloudRun, str]]:
    fake = FakeCloudRun()
    server = serve(fake)
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def make_backend(endpoint: str, **overrides) -> CloudRunBackend:
    values = dict(project="proj-1", region="us-central1", deployment_name="prod", artifact_root="gs://bkt/lbtrain",
                  job_image=IMAGE, job_service_account="lbtrain-jobs@proj-1.iam.gserviceaccount.com",
                  cloud_run_api_endpoint=endpoint, api_token="never-sent-token-123",
                  labelbox_webhook_secret="never-sent")
    return CloudRunBackend(Config(**{**values, **overrides}))


def spec(run_id: str, stage: str = "etl", attempt: int = 1, model_type: str = "text_single_classification",
         module: str = "") -> JobSpec:
    out = f"gs://bkt/lbtrain/runs/{run_id}/{stage}/a{attempt}"
    return JobSpec(name=job_name("prod", run_id, stage, attempt), run_id=run_id, stage=stage, attempt=attempt,
                   model_type=model_type, inputs_uri=f"gs://bkt/lbtrain/runs/{run_id}/inputs/{stage}-a{attempt}.json",
                   outputs_uri=out, labels={"deployment": "prod", "run_id": run_id, "stage": stage,
                                            "attempt": str(attempt)}, module=module)


def execution_name(job_id: str) -> str:
    job, execution = parse_cloud_run_job_id(job_id)
    return f"projects/proj-1/locations/us-central1/jobs/{job}/executions/{execution}"


def test_submit_creates_the_stage_job_once_and_runs_an_execution_per_attempt(cloudrun):
    fake, endpoint = cloudrun
    run_id = fresh_id("run")
    backend = make_backend(endpoint)
    ref = backend.submit(spec(run_id))
    created = fake.calls("POST", "/jobs")
    assert len(created) == 1
    job = created[0]
    assert job["labels"] == {"deployment": "prod", "stage": "etl", "lbtrain": "stage-job"}
    task = job["template"]["template"]
    container = task["containers"][0]
    assert container["image"] == IMAGE and container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DEPLOYMENT_NAME"] == "prod" and env["ARTIFACT_ROOT"] == "gs://bkt/lbtrain"
    assert task["serviceAccount"] == "lbtrain-jobs@proj-1.iam.gserviceaccount.com"
    assert task["timeout"] == "86400s" and int(task.get("maxRetries", 0)) == 0  # lbtrain's retry, not Cloud Run's
    assert "never-sent" not in str(fake.requests)
    run = fake.calls("POST", "/jobs/prod-etl-4c16g:run")
    assert len(run) == 1 and run[0]["overrides"]["timeout"] == "86400s"
    override = run[0]["overrides"]["containerOverrides"][0]
    assert override["args"] == spec(run_id).args()  # the same arguments as a Vertex CustomJob
    override_env = {e["name"]: e["value"] for e in override["env"]}
    assert override_env["LBTRAIN_JOB_NAME"] == spec(run_id).name and override_env["LBTRAIN_LABEL_RUN_ID"] == run_id
    assert ref.backend == "cloudrun" and owner_of(ref.id) == "cloudrun"
    assert execution_name(ref.id) in fake.executions and ref.name == execution_name(ref.id).rsplit("/", 1)[1]
    assert "console.cloud.google.com/run/jobs/executions" in ref.url

    # The next attempt and another run reuse the job: no create, no update (same template digest).
    backend.submit(spec(run_id, attempt=2))
    make_backend(endpoint).submit(spec(fresh_id("run")))
    assert len(fake.calls("POST", "/jobs")) == 1 and not fake.calls("PATCH", "/jobs/prod-etl-4c16g")
    assert len(fake.calls("POST", "/jobs/prod-etl-4c16g:run")) == 3

    # A new image updates the job in place (PATCH), once.
    make_backend(endpoint, job_image=IMAGE + "2").submit(spec(fresh_id("run")))
    make_backend(endpoint, job_image=IMAGE + "2").submit(spec(fresh_id("run")))
    patches = fake.calls("PATCH", "/jobs/prod-etl-4c16g")
    assert len(patches) == 1 and patches[0]["template"]["template"]["containers"][0]["image"] == IMAGE + "2"


def test_a_relaunch_finds_the_execution_instead_of_starting_another(cloudrun):
    fake, endpoint = cloudrun
    run_id = fresh_id("run")
    first = make_backend(endpoint).submit(spec(run_id, stage="train"))
    again = make_backend(endpoint).submit(spec(run_id, stage="train"))  # a fresh process, same step
    assert again == first and len(fake.executions) == 1
    assert make_backend(endpoint).find_by_name(spec(run_id, stage="train").name) == first
    assert make_backend(endpoint).find_by_name(spec(run_id, stage="train", attempt=2).name) is None
    assert make_backend(endpoint, deployment_name="other").find_by_name(spec(run_id, stage="train").name) is None


def test_state_is_read_from_the_execution(cloudrun):
    fake, endpoint = cloudrun
    backend = make_backend(endpoint)
    ref = backend.submit(spec(fresh_id("run")))
    name = execution_name(ref.id)
    assert backend.get_status(ref.id).state == "PENDING"
    fake.set_execution(name, "RUNNING")
    assert backend.get_status(ref.id).state == "RUNNING" and not backend.get_status(ref.id).terminal
    fake.set_execution(name, "FAILED", "Task prod-etl-4c16g-abcde-task0 failed: exit code 1")
    status = backend.get_status(ref.id)
    assert status.state == "FAILED" and status.terminal and "exit code 1" in status.error
    ok = backend.submit(spec(fresh_id("run")))
    fake.set_execution(execution_name(ok.id), "SUCCEEDED")
    assert backend.get_status(ok.id).state == "SUCCEEDED"
    assert backend.get_status("crj.prod-etl-4c16g.prod-etl-4c16g-zzzzz").state == "FAILED"  # 404 at the wire


def test_cancel(cloudrun):
    fake, endpoint = cloudrun
    backend = make_backend(endpoint)
    ref = backend.submit(spec(fresh_id("run")))
    fake.set_execution(execution_name(ref.id), "RUNNING")
    backend.cancel(ref.id)
    assert len(fake.calls("POST", ":cancel")) == 1 and fake.cancelling(execution_name(ref.id))
    assert backend.get_status(ref.id).state == "RUNNING"  # cancelling is not over
    fake.set_execution(execution_name(ref.id), "CANCELLED")
    assert backend.get_status(ref.id).state == "CANCELLED"
    backend.cancel(ref.id)  # already over: no second request
    assert len(fake.calls("POST", ":cancel")) == 1


def test_job_step_reads_the_execution_args(cloudrun):
    fake, endpoint = cloudrun
    run_id = fresh_id("run")
    ref = make_backend(endpoint).submit(spec(run_id, stage="evaluate", attempt=3))
    assert make_backend(endpoint).job_step(ref.id) == {"run_id": run_id, "stage": "evaluate", "attempt": 3}
    assert make_backend(endpoint, deployment_name="someone-else").job_step(ref.id) is None
    assert make_backend(endpoint).job_step("1234") is None


def test_the_modelrun_job_runs_its_own_module(cloudrun):
    fake, endpoint = cloudrun
    make_backend(endpoint).submit(spec(fresh_id("run"), stage="modelrun", module="jobs.modelrun"))
    job = fake.calls("POST", "/jobs")[0]
    assert job["template"]["template"]["containers"][0]["command"] == ["python", "-m", "jobs.modelrun"]
    # n1-standard-2 with max_hours 6: a 2 vCPU job, and the execution stopped after 6 h.
    assert fake.calls("POST", "/jobs/prod-modelrun-2c8g:run")[0]["overrides"]["timeout"] == "21600s"


def test_sizes_follow_job_machines_within_cloud_run_limits():
    assert size_for(Machine("n1-standard-4")) == Size(4, 16, 86400)
    assert size_for(Machine("n1-standard-8")) == Size(8, 32, 86400)
    assert size_for(Machine("n1-highcpu-8")) == Size(8, 8, 86400)
    assert size_for(Machine("n1-standard-2", max_hours=6.0)) == Size(2, 8, 21600)
    assert size_for(Machine("e2-small")) == Size(2, 8, 86400)
    assert size_for(Machine("n1-standard-16", max_hours=72)).timeout_s == 86400
    with pytest.raises(ValueError, match="vertex"):
        size_for(Machine("n1-standard-8", "NVIDIA_TESLA_T4", 1))


def test_stage_backends_most_specific_pattern_wins():
    table = ('{"*/etl": "cloudrun", "*/train": "vertex", "text_*/train": "cloudrun", "*/evaluate": "cloudrun", '
             '"*/deploy": "cloudrun"}')
    cfg = from_env({"JOB_BACKEND": "vertex", "STAGE_BACKENDS": table})
    assert backend_for(cfg, "ner", "etl") == "cloudrun"
    assert backend_for(cfg, "ner", "train") == "vertex"
    assert backend_for(cfg, "text_multi_classification", "train") == "cloudrun"
    assert backend_for(cfg, "bounding_box", "modelrun") == "vertex"  # no entry: JOB_BACKEND
    # The default of JOB_BACKEND=cloudrun: Vertex only for a GPU or a run longer than 24 h.
    default = from_env({"JOB_BACKEND": "cloudrun", "MODEL_OPTIONS": '{"bounding_box": {"training": "automl"}}',
                        "JOB_MACHINES": '{"image_multi_classification/train": {"machine_type": "n1-standard-8", '
                                        '"accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}}'})
    assert backend_for(default, "text_single_classification", "train") == "cloudrun"
    assert backend_for(default, "image_single_classification", "train") == "cloudrun"
    assert backend_for(default, "image_multi_classification", "train") == "vertex"
    assert backend_for(default, "bounding_box", "train") == "vertex"  # AutoML waits up to 72 h
    assert backend_for(default, "bounding_box", "etl") == "cloudrun"
    for bad in ('{"*/etl": "lambda"}', "[1]", "{"):
        with pytest.raises(ValueError, match="STAGE_BACKENDS"):
            from_env({"STAGE_BACKENDS": bad})
    with pytest.raises(ValueError, match="JOB_BACKEND"):
        from_env({"JOB_BACKEND": "k8s"})


def test_dispatch_routes_specs_by_stage_and_ids_by_owner(cloudrun, vertex):
    crfake, crendpoint = cloudrun
    vfake, vendpoint = vertex
    cfg = make_backend(crendpoint).config.with_overrides(
        vertex_api_endpoint=vendpoint, job_backend="vertex", stage_backends='{"*/etl": "cloudrun"}')
    backend = DispatchBackend(cfg)
    run_id = fresh_id("run")
    etl = backend.submit(spec(run_id, stage="etl"))
    train = backend.submit(spec(run_id, stage="train"))
    assert (etl.backend, train.backend) == ("cloudrun", "vertex")
    assert len(crfake.executions) == 1 and len(vfake.jobs) == 1
    crfake.set_execution(execution_name(etl.id), "SUCCEEDED")
    assert backend.get_status(etl.id).state == "SUCCEEDED" and backend.get_status(train.id).state == "PENDING"
    assert backend.job_step(etl.id)["stage"] == "etl" and backend.job_step(train.id)["stage"] == "train"
    # A relaunch of either finds its job, whichever backend holds it.
    assert backend.find_by_name(spec(run_id, stage="etl").name) == etl
    assert backend.find_by_name(spec(run_id, stage="train").name) == train
    backend.cancel(train.id)
    assert any(p.endswith(":cancel") for m, p, _ in vfake.requests if m == "POST")
