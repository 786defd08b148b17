"""The deploy stage on Vertex AI: the real google-cloud-aiplatform client (REST) against the local fake of
Vertex's model and endpoint APIs, champion.json on the GCS emulator. What crosses the wire is asserted."""

from __future__ import annotations

from typing import Any

import pytest

from jobs import deploy, serving, tasks, vertex_deploy
from jobs.context import StageContext, StageResult
from jobs.tasks.base import JobError
from lbtrain import pipelines, storage
from lbtrain.config import Config
from tests.fakes import vertex_models
from tests.fakes.vertex import FakeVertex

PROJECT, REGION = "proj-1", "europe-west4"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
IMAGE = "europe-docker.pkg.dev/proj-1/lbtrain/serving:abc"
TEXT = "text_single_classification"


@pytest.fixture
def env(vertex, gcs_bucket):
    fake, endpoint = vertex
    config = Config(project=PROJECT, region=REGION, deployment_name="prod", artifact_root=f"gs://{gcs_bucket}/lbtrain",
                    job_backend="vertex", serving_image=IMAGE, serving_machine="n1-standard-4",
                    vertex_api_endpoint=endpoint)
    return fake, config


def run_deploy(config: Config, run_id: str, value: float, model_type: str = TEXT, attempt: int = 1,
               train_uris: dict[str, str] | None = None, model_sha256: str = "") -> StageResult:
    """Upstream outputs of train and evaluate on GCS, then jobs.deploy.run as the job would call it."""
    root = config.artifact_root
    train, evaluate = storage.run_dir(root, run_id, "train", 1), storage.run_dir(root, run_id, "evaluate", 1)
    model_dir = storage.join(train, "model")
    storage.write_json(storage.join(model_dir, "model.json"), {"model_type": model_type})
    storage.write_json(storage.join(train, "outputs.json"), {"uris": {"model": model_dir, **(train_uris or {})}})
    metric = pipelines.get(model_type).headline_metric
    storage.write_json(storage.join(evaluate, "outputs.json"), {"metrics": {metric: value}})
    ctx = StageContext(run_id=run_id, stage="deploy", attempt=attempt, model_type=model_type, model_run_id="mr1",
                       model_id="m1", params={}, upstream={"train": train, "evaluate": evaluate},
                       outputs_uri=storage.run_dir(root, run_id, "deploy", attempt), config=config,
                       task=tasks.load(model_type), model_sha256=model_sha256)
    return deploy.run(ctx)


def calls(fake: FakeVertex, method: str, suffix: str = "") -> list[tuple[str, Any]]:
    return [(path, body) for m, path, body in fake.requests if m == method and path.endswith(suffix)]


def champion(config: Config, model_type: str = TEXT) -> dict[str, Any] | None:
    uri = deploy.champion_uri(config.artifact_root, model_type)
    return storage.read_json(uri) if storage.exists(uri) else None


def endpoints(fake: FakeVertex) -> list[dict[str, Any]]:
    return list(fake.table("endpoints").values())


def test_first_deploy_uploads_with_the_serving_image_creates_the_endpoint_and_deploys(env):
    fake, config = env
    result = run_deploy(config, "r1", 0.8)

    [(path, upload)] = calls(fake, "POST", "/models:upload")
    assert path == f"/v1/{PARENT}/models:upload"
    model = upload["model"]
    assert model["displayName"] == "prod-text_single_classification-r1"
    assert model["containerSpec"]["imageUri"] == IMAGE
    assert model["containerSpec"]["predictRoute"] == serving.DEFAULT_PREDICT_ROUTE == "/predict"
    assert model["containerSpec"]["healthRoute"] == serving.DEFAULT_HEALTH_ROUTE == "/health"
    assert model["artifactUri"] == f"{config.artifact_root}/runs/r1/train/a1/model"
    assert model["labels"] == {"deployment": "prod", "run_id": "r1", "model_type": TEXT}

    [(path, created)] = calls(fake, "POST", "/endpoints")
    assert created == {"displayName": "prod-text_single_classification",
                       "labels": {"deployment": "prod", "model_type": TEXT}}
    [(path, deployed)] = calls(fake, "POST", ":deployModel")
    [ep] = endpoints(fake)
    assert path == f"/v1/{ep['name']}:deployModel"
    [uploaded] = fake.table("models").values()
    assert deployed["deployedModel"]["model"] == uploaded["name"] + "@1"
    assert deployed["deployedModel"]["dedicatedResources"] == {
        "machineSpec": {"machineType": "n1-standard-4"}, "minReplicaCount": 1, "maxReplicaCount": 1}
    assert deployed["trafficSplit"] == {"0": 100}
    assert not calls(fake, "POST", ":undeployModel") and not calls(fake, "DELETE")

    url = f"{config.vertex_api_endpoint}/v1/{ep['name']}:predict"
    assert result.metrics["deployed"] is True and result.metrics["reason"] == "no champion yet"
    assert result.metrics["endpoint"] == url
    record = champion(config)
    assert record["run_id"] == "r1" and record["value"] == 0.8 and record["endpoint"] == url
    assert record["vertex_model"] == uploaded["name"] and record["vertex_endpoint"] == ep["name"]
    assert record["deployed_model_id"] == ep["deployedModels"][0]["id"]
    assert storage.read_json(result.uris["deployment"]) == result.metrics
    assert not storage.exists(deploy.champion_uri(config.artifact_root, TEXT) + ".lock")  # lease released


def test_the_recorded_model_digest_goes_into_the_serving_containers_environment(env):
    fake, config = env
    sha = "ab" * 32
    run_deploy(config, "r1", 0.8, model_sha256=sha)
    [(_, upload)] = calls(fake, "POST", "/models:upload")
    assert upload["model"]["containerSpec"]["env"] == [{"name": "LBTRAIN_MODEL_SHA256", "value": sha}]
    assert champion(config)["model_sha256"] == sha


def test_better_run_replaces_the_champion_worse_run_and_rerun_change_nothing(env):
    fake, config = env
    run_deploy(config, "r1", 0.8)
    first = champion(config)

    result = run_deploy(config, "r2", 0.9)
    assert result.metrics["deployed"] is True and "0.9000 >= champion 0.8000" in result.metrics["reason"]
    assert len(calls(fake, "POST", "/models:upload")) == 2 and len(calls(fake, "POST", "/endpoints")) == 1
    second = champion(config)
    assert second["run_id"] == "r2" and second["vertex_endpoint"] == first["vertex_endpoint"]
    # deployed first with all traffic, only then the superseded champion undeployed
    order = [(m, p.rsplit(":", 1)[-1]) for m, p, _ in fake.requests if ":" in p.rsplit("/", 1)[-1]]
    assert order[-2:] == [("POST", "deployModel"), ("POST", "undeployModel")]
    [(_, undeploy)] = calls(fake, "POST", ":undeployModel")
    assert undeploy == {"deployedModelId": first["deployed_model_id"],
                        "trafficSplit": {second["deployed_model_id"]: 100}}
    [ep] = endpoints(fake)
    assert [d["model"] for d in ep["deployedModels"]] == [second["vertex_model"]]
    assert ep["trafficSplit"] == {second["deployed_model_id"]: 100}

    before = len(fake.requests)
    worse = run_deploy(config, "r3", 0.5)
    assert worse.metrics["deployed"] is False and worse.metrics["endpoint"] == ""
    assert worse.metrics["champion_run_id"] == "r2" and "0.5000 < champion 0.9000" in worse.metrics["reason"]
    again = run_deploy(config, "r2", 0.9, attempt=2)
    assert again.metrics["deployed"] is True and again.metrics["reason"] == "already the champion"
    assert again.metrics["endpoint"] == second["endpoint"]
    assert [m for m, _, _ in fake.requests[before:]] == ["GET"] * (len(fake.requests) - before)  # reads only
    assert champion(config) == second


def test_rerun_after_a_crash_before_the_record_uploads_and_deploys_nothing_again(env):
    fake, config = env
    run_deploy(config, "r1", 0.8)
    first = champion(config)
    # a crash after deploying, before champion.json was written
    storage._blob(deploy.champion_uri(config.artifact_root, TEXT)).delete()
    posts = len(calls(fake, "POST"))

    result = run_deploy(config, "r1", 0.8)
    assert len(calls(fake, "POST")) == posts  # the uploaded model and its deployment were found
    assert result.metrics["deployed"] is True
    again = champion(config)
    assert {k: again[k] for k in ("vertex_model", "vertex_endpoint", "deployed_model_id", "endpoint")} == \
        {k: first[k] for k in ("vertex_model", "vertex_endpoint", "deployed_model_id", "endpoint")}


def test_failed_deploy_on_a_new_endpoint_deletes_it_and_says_why(env):
    fake, config = env
    vertex_models.fail_next(fake, "deployModel", "Model server never became ready. Please validate your model.")
    with pytest.raises(JobError) as raised:
        run_deploy(config, "r1", 0.8)
    message = str(raised.value)
    assert "deploying model" in message and "Model server never became ready" in message
    assert "deleted the endpoint created for it" in message
    [(path, _)] = calls(fake, "POST", "/endpoints")
    [(deleted, _)] = calls(fake, "DELETE")
    assert deleted.startswith(f"/v1/{PARENT}/endpoints/") and endpoints(fake) == []
    assert champion(config) is None

    # the retry finds the uploaded model, creates a new endpoint and deploys
    result = run_deploy(config, "r1", 0.8, attempt=2)
    assert result.metrics["deployed"] is True
    assert len(calls(fake, "POST", "/models:upload")) == 1 and len(endpoints(fake)) == 1


def test_failed_deploy_on_the_existing_endpoint_keeps_it_and_the_champion(env):
    fake, config = env
    run_deploy(config, "r1", 0.8)
    vertex_models.fail_next(fake, "deployModel", "Quota exceeded for n1-standard-4")
    with pytest.raises(JobError, match="Quota exceeded"):
        run_deploy(config, "r2", 0.9)
    assert not calls(fake, "DELETE") and not calls(fake, "POST", ":undeployModel")
    [ep] = endpoints(fake)
    assert [d["model"] for d in ep["deployedModels"]] == [champion(config)["vertex_model"]]
    assert champion(config)["run_id"] == "r1"


def test_automl_model_is_deployed_as_registered_without_upload(env):
    fake, config = env
    automl = vertex_models.add_model(fake, PARENT, {"displayName": "prod-image-automl"})  # as AutoML registers it
    model_type = "image_single_classification"
    result = run_deploy(config, "r1", 0.7, model_type=model_type, train_uris={"vertex_model": automl["name"]})
    assert not calls(fake, "POST", "/models:upload")
    [(_, deployed)] = calls(fake, "POST", ":deployModel")
    assert deployed["deployedModel"]["model"] == automl["name"] + "@1"
    assert deployed["deployedModel"]["automaticResources"] == {"minReplicaCount": 1, "maxReplicaCount": 1}
    assert "dedicatedResources" not in deployed["deployedModel"]
    record = champion(config, model_type)
    assert record["vertex_model"] == automl["name"] == record["model_uri"]
    assert result.metrics["deployed"] is True


def test_champion_no_longer_deployed_is_deployed_again_rather_than_a_worse_model(env):
    fake, config = env
    run_deploy(config, "r1", 0.8)
    first = champion(config)
    endpoint = vertex_deploy.aiplatform(config).Endpoint(first["vertex_endpoint"])
    endpoint.undeploy(first["deployed_model_id"])  # someone undeployed it by hand
    uploads = len(calls(fake, "POST", "/models:upload"))

    result = run_deploy(config, "r2", 0.5)
    assert result.metrics["deployed"] is False and "deployed again" in result.metrics["reason"]
    assert len(calls(fake, "POST", "/models:upload")) == uploads  # r1's model, not r2's
    [ep] = endpoints(fake)
    assert [d["model"] for d in ep["deployedModels"]] == [first["vertex_model"]]
    assert champion(config)["run_id"] == "r1"


def test_no_serving_image_is_a_clear_error_before_any_upload(env):
    fake, config = env
    with pytest.raises(JobError, match="SERVING_IMAGE is not set"):
        run_deploy(config.with_overrides(serving_image=""), "r1", 0.8)
    assert not calls(fake, "POST")


def test_lease_held_by_another_deploy_is_waited_for_and_an_expired_one_taken_over(env):
    _, config = env
    uri = deploy.champion_uri(config.artifact_root, TEXT) + ".lock"
    storage.write_json(uri, {"holder": "other/a1", "expires_at": 4102444800})
    with pytest.raises(JobError, match=r"another deploy \(other/a1\) holds"):
        with deploy._gcs_lease(uri, "me/a1", wait=0.0):
            pass
    storage.write_json(uri, {"holder": "other/a1", "expires_at": 1})  # expired: its holder died
    with deploy._gcs_lease(uri, "me/a1", wait=0.0):
        assert storage.read_json(uri)["holder"] == "me/a1"
    assert not storage.exists(uri)


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_generation_helpers_read_what_was_written(where, tmp_path, gcs_bucket):
    uri = str(tmp_path / "c.json") if where == "local" else f"gs://{gcs_bucket}/c.json"
    assert storage.read_json_generation(uri) == (None, 0)
    first = storage.write_json_if_generation(uri, {"v": 1}, 0)
    assert first > 0 and storage.read_json_generation(uri) == ({"v": 1}, first)
    second = storage.write_json_if_generation(uri, {"v": 2}, first)
    assert second != first and storage.read_json_generation(uri) == ({"v": 2}, second)
    if where == "local":  # GCS enforces these preconditions; the emulator does not, so only the local path is tested
        with pytest.raises(storage.GenerationMismatch):
            storage.write_json_if_generation(uri, {"v": 3}, first)
        with pytest.raises(storage.GenerationMismatch):
            storage.write_json_if_generation(uri, {"v": 3}, 0)
        with pytest.raises(storage.GenerationMismatch):
            storage.delete_if_generation(uri, first)
    storage.delete_if_generation(uri, second)
    assert storage.read_json_generation(uri) == (None, 0)


def test_local_generation_moves_past_a_file_written_without_one(tmp_path):
    uri = str(tmp_path / "c.json")
    storage.write_json(uri, {"v": 0})
    _, generation = storage.read_json_generation(uri)
    assert storage.write_json_if_generation(uri, {"v": 1}, generation) != generation
    with pytest.raises(storage.GenerationMismatch):
        storage.write_json_if_generation(uri, {"v": 2}, generation)


def test_deploy_and_its_clean_up_wait_on_pending_operations(env):
    """Each operation (upload, endpoint create, deploy, delete) answers done: false once: the real client
    polls it (GET /ui/…) and the deploy stage goes on only once it is done."""
    fake, config = env
    fake.lro_polls = 1
    vertex_models.fail_next(fake, "deployModel", "Model server never became ready.")
    with pytest.raises(JobError, match="deleted the endpoint created for it"):
        run_deploy(config, "r1", 0.8)
    assert endpoints(fake) == [] and not fake.pending  # the delete was waited for
    result = run_deploy(config, "r1", 0.8, attempt=2)
    assert result.metrics["deployed"] is True
    [ep] = endpoints(fake)
    assert [d["model"] for d in ep["deployedModels"]] == [champion(config)["vertex_model"]]
    polled = {p.rsplit("/operations/", 1)[0].rsplit("/", 2)[-2] for m, p, _ in fake.requests
              if m == "GET" and p.startswith("/ui/") and "/operations/" in p}
    assert polled == {"models", "endpoints"}
    assert all(op["done"] for op in fake.operations.values())
