"""The deployed configuration as a whole (tests/prod/deployment.py): every service from its image's
environment with the environment Terraform gives it, pushes authenticated as Pub/Sub and Cloud Run
deliver them, Vertex jobs, the SDK Labelbox, gs:// artifacts and the jobs' Labelbox key from Secret
Manager. Each of the six model types runs to SUCCEEDED with its statuses, predictions and metrics in
(the fake) Labelbox."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from lbtrain import datasets, pipelines
from tests import http
from tests.conftest import fresh_id
from tests.prod.deployment import SECRET_VALUES, Deployment, _storage_host, json_rows

pytestmark = pytest.mark.prod

STATUSES = ["EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL", "COMPLETE"]
# Small data and short training: the plumbing of each type in the deployed shape, not its quality.
CASES: dict[str, tuple[int, dict[str, Any]]] = {
    "text_single_classification": (150, {}),
    "text_multi_classification": (150, {"C": [10]}),
    "ner": (150, {"c1": [0.2], "c2": [0.1], "max_iterations": 20}),
    "image_single_classification": (120, {"epochs": 1, "threads": 1}),
    "image_multi_classification": (120, {"epochs": 1, "threads": 1}),
    # Three whole epochs (no time box: six runs share two cores here), or the box head may not have learnt a
    # size yet and every detection is degenerate.
    "bounding_box": (120, {"epochs": 3, "max_seconds": 600.0, "threads": 1, "score_threshold": 0.05}),
}


def test_every_model_type_is_covered() -> None:
    assert set(CASES) == set(pipelines.names())


def _model_run(deployment: Deployment, model_type: str, limit: int, tmp: Path) -> tuple[str, list[dict[str, Any]]]:
    """Reference rows as a Labelbox model run; image media in the customer's bucket (gs://)."""
    mr = fresh_id("mr")
    datasets.build(model_type, str(tmp), mr, limit=limit)
    rows = json_rows(tmp / "model_runs" / mr / "export.ndjson")
    if pipelines.get(model_type).media == "image":
        from google.cloud import storage as gcs

        from lbtrain import storage

        with _storage_host(deployment.gcs_host):
            bucket = gcs.Client(project=deployment.project).bucket(deployment.media_bucket)
            for row in rows:
                local = storage.local_path(row["data_row"]["row_data"])
                blob = bucket.blob(f"{mr}/{local.name}")
                blob.upload_from_filename(str(local), timeout=30)
                row["data_row"]["row_data"] = f"gs://{deployment.media_bucket}/{mr}/{local.name}"
    deployment.labelbox.add_model_run(mr, rows, model_id="prod-model")
    return mr, rows


def test_six_model_types_succeed_in_the_deployed_configuration(deployment: Deployment, tmp_path: Path) -> None:
    api = deployment.api()
    started: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
    for model_type, (limit, params) in CASES.items():
        mr, rows = _model_run(deployment, model_type, limit, tmp_path / model_type)
        if model_type == "text_single_classification":  # Labelbox's Train model button: a signed webhook
            status, answer = deployment.webhook("/model_run", {"modelId": "prod-model", "modelRunId": mr,
                                                               "modelType": model_type}, fresh_id("delivery"))
            assert status == 200, answer
        else:  # the REST API, with small training parameters
            answer = api.start_run(model_type, mr, model_id="prod-model", params=params)
        started[model_type] = (answer["run_id"], mr, rows)

    # `gcloud pubsub topics publish {dep}-runs`: Pub/Sub pushes it to the public ingress with its OIDC token.
    from google.cloud import pubsub_v1

    mr, rows = _model_run(deployment, "text_single_classification", 150, tmp_path / "published")
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(deployment.project, f"{deployment.deployment}-runs")
    publisher.publish(topic, json.dumps({"model_type": "text_single_classification", "model_run_id": mr,
                                         "model_id": "prod-model"}).encode()).result(timeout=30)
    listed = _wait_listed(api, mr)
    started["published text_single_classification"] = (listed["run_id"], mr, rows)

    runs = {t: api.wait(run_id, timeout=1200, interval=1.0) for t, (run_id, _, _) in started.items()}
    failed = {t: r.get("error") for t, r in runs.items() if r["status"] != "SUCCEEDED"}
    assert not failed, json.dumps(failed, indent=1)

    accounts = deployment.accounts()
    launcher_env = deployment.services["launcher-etl"].env
    for model_type, run in runs.items():
        run_id, mr, rows = started[model_type]
        assert [s["state"] for s in run["steps"]] == ["SUCCEEDED"] * 4
        model_type = model_type.removeprefix("published ")
        headline = pipelines.get(model_type).headline_metric
        assert 0.0 <= run["metrics"][headline] <= 1.0
        # Labelbox heard every status, in order, and got predictions for the model run's rows.
        assert [s["status"] for s in deployment.labelbox.statuses if s["model_run_id"] == mr] == STATUSES
        uploaded = [r for u in deployment.labelbox.uploads if u["model_run_id"] == mr for r in u["rows"]]
        predicted = {r["dataRow"]["id"] for r in uploaded if "dataRow" in r and "aggregation" not in r}
        assert predicted, (model_type, json.dumps(uploaded[:3])[:2000],
                           [u["model_run_id"] for u in deployment.labelbox.uploads])
        assert predicted <= {r["data_row"]["id"] for r in rows}
        assert any(r.get("aggregation") == "CONFUSION_MATRIX" for r in uploaded)
        # Every stage ran as a Vertex CustomJob of Terraform's jobs image, as the jobs' account, given the
        # API key's secret name and never its value.
        created = [b for b in deployment.vertex.created() if b["labels"]["run_id"] == run_id]
        assert len(created) == 4
        for body in created:
            container = body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
            assert container["imageUri"] == launcher_env["JOB_IMAGE"]
            assert body["jobSpec"]["serviceAccount"] == accounts["jobs"]
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert env["LABELBOX_API_KEY_SECRET"] == launcher_env["LABELBOX_API_KEY_SECRET"]
        assert run["deployment"]["deployed"] is True

    # The dashboard (its own image and Terraform's env) shows the runs and each type's champion from gs://.
    board = deployment.services["dashboard"].url
    for run in runs.values():
        status, page = http.get(f"{board}/dashboard/runs/{run['run_id']}")
        assert status == 200 and run["run_id"] in page
    for model_type in CASES:
        status, page = http.get(f"{board}/dashboard/models/{model_type}")
        assert status == 200 and "unreadable" not in page, page[-2000:]
        champion = json.loads(_read_gcs(deployment, f"models/{model_type}/champion.json"))
        assert champion["run_id"] in page

    # The jobs read the key from Secret Manager (the version Terraform names); nothing secret leaked.
    assert launcher_env["LABELBOX_API_KEY_SECRET"] in deployment.secrets.accesses()
    keys = {r.headers.get("authorization") for r in deployment.labelbox.requests if r.query}
    assert keys == {f"Bearer {SECRET_VALUES['LABELBOX_API_KEY']}"}
    _no_secrets(deployment, runs)
    _pushes_were_accepted(deployment, "ingress")


def _read_gcs(deployment: Deployment, name: str) -> str:
    from google.cloud import storage as gcs

    with _storage_host(deployment.gcs_host):
        bucket = gcs.Client(project=deployment.project).bucket(deployment.artifact_bucket)
        return bucket.blob(name).download_as_text(timeout=30)


def _wait_listed(api: Any, model_run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = api.list_runs(model_run_id=model_run_id).get("runs") or []
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no run for model run {model_run_id} after {timeout}s")


def _no_secrets(deployment: Deployment, runs: dict[str, Any]) -> None:
    places = {"vertex requests": json.dumps(deployment.vertex.requests), "run documents": json.dumps(runs),
              "logs": deployment.logs(),
              "labelbox payloads": json.dumps([[r.query, r.variables] for r in deployment.labelbox.requests])}
    for name, text in places.items():
        for secret, value in SECRET_VALUES.items():
            assert value not in text, f"{secret} appears in {name}"


def _pushes_were_accepted(deployment: Deployment, *receivers: str) -> None:
    """Every push reached its handler authenticated (never 401/403) and none timed out or crashed."""
    pushes = deployment.pushes()
    assert {key for key, _ in pushes} >= {"launcher-etl", "launcher-train", "launcher-evaluate", "launcher-deploy",
                                          "job-events", *receivers}
    refused = [(key, f.path, f.status) for key, f in pushes if f.status in (401, 403) or f.status >= 500
               and f.status != 503]
    assert not refused, refused
    assert all(f.authorized for _, f in pushes)


def test_the_scheduler_reaches_the_reconciler(deployment: Deployment) -> None:
    status, body = deployment.tick_scheduler()
    assert status == 200, body


LABEL_WEBHOOKS = Path(__file__).resolve().parents[1] / "data" / "label_webhooks"


def test_a_retraining_rule_on_5000_labeled_rows_holds_no_push(deployment: Deployment, tmp_path: Path) -> None:
    """Label webhooks fire a rule; its model run (label upsert, export and splits of 5,000 rows) is created by
    the modelrun job on Vertex while every push has long been answered; then the run trains and deploys."""
    api, fake = deployment.api(), deployment.labelbox
    project_id, model_id = fresh_id("proj"), fresh_id("model")
    datasets.build_project("text_single_classification", str(tmp_path), project_id, limit=5000)
    rows = json_rows(tmp_path / "projects" / project_id / "export.ndjson")
    assert len(rows) == 5000 and all(r["projects"][project_id]["labels"] for r in rows)
    fake.add_project(project_id, rows)
    fake.add_model(model_id)
    created = fake.hold("CreateModelRunPyApi")  # Labelbox takes its time: the job waits, nothing else may
    try:
        api.set_trigger(project_id, {"model_type": "text_single_classification", "model_id": model_id,
                                     "min_labels": 3})
        for index in range(3):
            body = json.loads((LABEL_WEBHOOKS / "label_created.json").read_text())
            row = rows[index]
            body["project"]["id"], body["dataRow"]["id"] = project_id, row["data_row"]["id"]
            body["id"] = row["projects"][project_id]["labels"][0]["id"]
            status, answer = deployment.webhook("/webhooks/labelbox", body, fresh_id("lw"), event="LABEL_CREATED")
            assert status == 200, answer
        run_id = answer["run_id"]
        _wait_for(lambda: "CreateModelRunPyApi" in fake.operations(), "the modelrun job to call Labelbox")
        # Held inside Labelbox: the run waits on its job, and every push so far was answered.
        run = api.get_run(run_id)
        assert run["status"] == "RUNNING" and run["stage"] == "modelrun" and fake.created_model_runs == []
        assert any(key == "launcher-modelrun" and f.status == 204 for key, f in deployment.pushes())
        modelrun_jobs = [b for b in deployment.vertex.created() if b["labels"]["run_id"] == run_id]
        assert [b["labels"]["stage"] for b in modelrun_jobs] == ["modelrun"]
    finally:
        created.set()
    done = api.wait(run_id, timeout=900, interval=1.0)
    assert done["status"] == "SUCCEEDED", json.dumps(done.get("error"), indent=1)
    (mr,) = fake.model_runs_of(model_id)
    assert done["model_run_id"] == mr and len(fake.created_model_runs) == 1
    assert len(fake.model_runs[mr].members) == 5000
    assert [s["status"] for s in fake.statuses if s["model_run_id"] == mr] == STATUSES
    _pushes_were_accepted(deployment, "launcher-modelrun")


def _wait_for(predicate: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
