"""The deploy stage on Cloud Run: the real run_v2 client (REST) against the fake Cloud Run Admin API,
champion.json on the GCS emulator. Gate, a revision per run, traffic moved only once the revision is ready,
the superseded revision kept for rollback. What crosses the wire is asserted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from jobs import cloudrun_deploy, deploy
from jobs.tasks.base import JobError
from lbtrain import storage
from lbtrain.config import Config
from tests.conftest import fresh_id
from tests.fakes.cloud_run_admin import FakeCloudRun, serve
from tests.integration.test_vertex_deploy import TEXT, champion, run_deploy

IMAGE = "us-docker.pkg.dev/proj-1/lbtrain/serving:abc"
SHA = "ab" * 32


@pytest.fixture
def env(gcs_bucket) -> Iterator[tuple[FakeCloudRun, Config]]:
    fake = FakeCloudRun()
    server = serve(fake)
    config = Config(project="proj-1", region="us-central1", deployment_name=fresh_id("prod").replace("_", "-"),
                    artifact_root=f"gs://{gcs_bucket}/lbtrain", job_backend="vertex", serving_image=IMAGE,
                    job_service_account="lbtrain-jobs@proj-1.iam.gserviceaccount.com",
                    serving_backends='{"text_*": "cloudrun"}',
                    cloud_run_api_endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    yield fake, config
    server.shutdown()


def traffic(fake: FakeCloudRun) -> dict[str, int]:
    (service,) = fake.services.values()
    return {t["revision"]: t["percent"] for t in service["trafficStatuses"]}


def test_serving_backends_choose_per_model_type(env):
    _, config = env
    assert cloudrun_deploy.serving_backend(config, TEXT) == "cloudrun"
    assert cloudrun_deploy.serving_backend(config, "bounding_box") == "vertex"  # JOB_BACKEND's own
    assert cloudrun_deploy.serving_backend(config.with_overrides(serving_backends=""), TEXT) == "vertex"


def test_gate_revision_per_run_traffic_after_ready_and_rollback(env):
    fake, config = env
    run_a, run_b, run_c = fresh_id("a"), fresh_id("b"), fresh_id("c")
    rev_a, rev_b = (cloudrun_deploy.revision_id(config, TEXT, r) for r in (run_a, run_b))

    first = run_deploy(config, run_a, 0.80, model_sha256=SHA)
    assert first.metrics["deployed"] is True
    created = fake.calls("POST", "/services")
    assert len(created) == 1
    template = created[0]["template"]
    assert template["revision"] == rev_a and rev_a.startswith(cloudrun_deploy.service_id(config, TEXT) + "-")
    container = template["containers"][0]
    env_vars = {e["name"]: e["value"] for e in container["env"]}
    model_dir = storage.join(storage.run_dir(config.artifact_root, run_a, "train", 1), "model")
    assert env_vars["AIP_STORAGE_URI"] == model_dir and env_vars["LBTRAIN_MODEL_SHA256"] == SHA
    assert env_vars["AIP_HEALTH_ROUTE"] == "/health" and env_vars["AIP_PREDICT_ROUTE"] == "/predict"
    assert container["image"] == IMAGE and container["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert int(template["scaling"].get("minInstanceCount", 0)) == 0
    assert template["maxInstanceRequestConcurrency"] == 40
    assert template["serviceAccount"] == config.job_service_account
    record = champion(config)
    assert record["cloud_run_revision"] == rev_a and record["endpoint"].endswith("/predict")
    assert record["endpoint"] == first.metrics["endpoint"] and record["endpoint"].startswith("https://")
    assert traffic(fake) == {rev_a: 100}

    # A better model: its revision comes with no traffic, and only once ready does traffic move.
    second = run_deploy(config, run_b, 0.90)
    assert second.metrics["deployed"] is True
    patches = fake.calls("PATCH", "/services/" + cloudrun_deploy.service_id(config, TEXT))
    assert len(patches) == 2
    staged = {t["revision"]: int(t.get("percent", 0)) for t in patches[0]["traffic"]}
    assert staged == {rev_a: 100, rev_b: 0}, "traffic moved before the new revision was ready"
    moved = {t["revision"]: (int(t.get("percent", 0)), t.get("tag")) for t in patches[1]["traffic"]}
    assert moved[rev_b][0] == 100 and moved[rev_a] == (0, "previous")  # kept for rollback
    assert traffic(fake) == {rev_b: 100, rev_a: 0}
    assert len(fake.revisions) == 2  # nothing deleted
    assert champion(config)["cloud_run_revision"] == rev_b and champion(config)["cloud_run_previous"] == rev_a

    # A worse model: the gate keeps the champion; nothing reaches Cloud Run but reads.
    third = run_deploy(config, run_c, 0.50)
    assert third.metrics["deployed"] is False
    assert len(fake.calls("PATCH", "")) == 2 and len(fake.revisions) == 2

    # Rollback: all traffic back to the superseded revision at once.
    assert cloudrun_deploy.rollback(config, TEXT) == rev_a
    assert traffic(fake)[rev_a] == 100 and traffic(fake)[rev_b] == 0

    # The champion's deploy again (e.g. a retried attempt): its revision exists, only traffic moves.
    again = run_deploy(config, run_b, 0.90, attempt=2)
    assert again.metrics["deployed"] is True and traffic(fake)[rev_b] == 100
    assert len(fake.revisions) == 2
    # Once more while it serves: nothing new, and the rollback target is still tagged.
    run_deploy(config, run_b, 0.90, attempt=3)
    assert champion(config)["cloud_run_previous"] == rev_a and cloudrun_deploy.rollback(config, TEXT) == rev_a


def test_a_revision_that_never_becomes_ready_gets_no_traffic(env, monkeypatch):
    fake, config = env
    run_a, run_b = fresh_id("a"), fresh_id("b")
    run_deploy(config, run_a, 0.80)
    rev_a, rev_b = (cloudrun_deploy.revision_id(config, TEXT, r) for r in (run_a, run_b))
    fake.unhealthy.add(rev_b)
    with pytest.raises(JobError, match="startup probe"):
        run_deploy(config, run_b, 0.95)
    assert traffic(fake) == {rev_a: 100, rev_b: 0}
    assert champion(config)["cloud_run_revision"] == rev_a


def test_the_ingress_of_a_deploy_record_is_the_service_url(env):
    fake, config = env
    run_a = fresh_id("a")
    fake.service_urls[cloudrun_deploy.service_id(config, TEXT)] = "https://serve-text-abc-uc.a.run.app"
    result = run_deploy(config, run_a, 0.7)
    served: dict[str, Any] = champion(config)
    assert result.metrics["endpoint"] == "https://serve-text-abc-uc.a.run.app/predict"
    assert served["service_url"] == "https://serve-text-abc-uc.a.run.app"
    assert deploy.champion_uri(config.artifact_root, TEXT).endswith("champion.json")
