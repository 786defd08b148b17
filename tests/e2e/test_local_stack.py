"""End to end: `lbtrain dev` as a subprocess, real jobs training real models on public data,
driven the way users drive it (signed webhooks, `gcloud pubsub topics publish`, the CLI)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lbtrain import storage
from lbtrain.client import ApiError, Client
from tests.conftest import fresh_id
from tests.e2e.conftest import SECRET, TOKEN, Dev


def _wait(dev: Dev, run_id: str, timeout: float = 600) -> dict[str, Any]:
    return dev.api.wait(run_id, timeout=timeout, interval=0.5)


def test_signed_webhook_trains_evaluates_and_deploys(dev: Dev):
    mr = fresh_id("mr")
    summary = dev.build(mr, "--limit", "900")
    first = dev.webhook(mr, delivery_id="e2e-delivery-1")
    again = dev.webhook(mr, delivery_id="e2e-delivery-1")  # Labelbox redelivers
    assert again["run_id"] == first["run_id"] and again["created"] is False

    run = _wait(dev, first["run_id"])
    assert run["status"] == "SUCCEEDED", json.dumps(run, indent=1)
    assert [(s["stage"], s["state"], s["attempt"]) for s in run["steps"]] == [
        ("etl", "SUCCEEDED", 1), ("train", "SUCCEEDED", 1), ("evaluate", "SUCCEEDED", 1), ("deploy", "SUCCEEDED", 1)]
    # job-events recorded the digest of the model file train wrote; evaluate and deploy loaded only that file
    model_file = Path(storage.local_path(run["outputs"]["train"])) / "model" / "model.joblib"
    assert run["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    metrics = run["metrics"]
    classes = ["fresh", "plot", "rotten"]
    assert 0.5 < metrics["accuracy"] <= 1.0 and 0.5 < metrics["macro_f1"] <= 1.0  # 3 classes: chance is ~0.33
    assert sorted(metrics["per_class"]) == classes
    assert {"precision", "recall", "f1"} <= set(metrics["per_class"]["plot"])
    cm = metrics["confusion_matrix"]
    assert cm["labels"] == classes
    assert sum(sum(row["predicted"]) for row in cm["rows"]) == metrics["test_size"]

    # Labelbox saw the statuses in order and got a prediction for every data row.
    assert [s["status"] for s in dev.statuses(mr)] == ["EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL",
                                                       "COMPLETE"]
    uploads = list((dev.model_run_dir(mr) / "predictions").glob("*.ndjson"))
    assert len(uploads) == 1
    rows = [json.loads(line) for line in uploads[0].read_text().splitlines()]
    predictions = [r for r in rows if "answer" in r]
    metric_rows = [r for r in rows if r.get("aggregation") == "CONFUSION_MATRIX"]
    assert len({r["dataRow"]["id"] for r in predictions}) == summary["rows"]
    assert all(r["answer"]["name"] in classes and 0 <= r["answer"]["confidence"] <= 1 for r in predictions)
    assert metric_rows and all(len(r["metricValue"]) == 4 and r["featureName"] in classes for r in metric_rows)

    # The deployed model answers on the Vertex prediction contract.
    deployment = run["deployment"]
    assert deployment["deployed"] is True and deployment["endpoint"]
    req = urllib.request.Request(deployment["endpoint"], method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"instances": [{"text": "A dull, lifeless mess."}]}).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer = json.loads(resp.read())
    assert answer["predictions"][0]["label"] in classes

    # The CLI sees the same run.
    shown = dev.cli("runs", "show", first["run_id"]).stdout
    assert "SUCCEEDED" in shown and "macro_f1=" in shown
    listed = json.loads(dev.cli("runs", "--json", "list", "--status", "SUCCEEDED").stdout)
    assert first["run_id"] in [r["run_id"] for r in listed["runs"]]


def test_gcloud_publish_on_runs_topic_with_another_dataset(dev: Dev, tmp_path: Path):
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.fail("gcloud CLI is required (it ships the emulators)")
    mr = fresh_id("mr")
    dev.build(mr, "--dataset", "presidential_debates", "--limit", "600")
    env = {**dev.env, "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{dev.env['PUBSUB_EMULATOR_HOST']}/",
           "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true", "CLOUDSDK_CORE_PROJECT": dev.env["GOOGLE_CLOUD_PROJECT"],
           "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    message = json.dumps({"model_type": "text_single_classification", "model_run_id": mr})
    out = subprocess.run([gcloud, "pubsub", "topics", "publish", "dev-runs", f"--message={message}"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

    def run_of_model_run():
        runs = dev.api.list_runs(model_run_id=mr)["runs"]
        return runs[0] if runs else None

    deadline = time.monotonic() + 30
    while (first := run_of_model_run()) is None:
        assert time.monotonic() < deadline, "the published message started no run"
        time.sleep(0.3)
    assert first["trigger"]["source"] == "pubsub"
    run = _wait(dev, first["run_id"])
    assert run["status"] == "SUCCEEDED", json.dumps(run, indent=1)
    assert run["metrics"]["macro_f1"] > 0.4
    assert [s["status"] for s in dev.statuses(mr)][-1] == "COMPLETE"
    assert len(dev.api.list_runs(model_run_id=mr)["runs"]) == 1


def test_too_few_labels_fails_with_class_and_split(dev: Dev):
    mr = fresh_id("mr")
    dev.build(mr, "--limit", "300")
    export = dev.model_run_dir(mr) / "export.ndjson"
    rows = [json.loads(line) for line in export.read_text().splitlines()]

    def is_test_plot(row: dict[str, Any]) -> bool:
        run = next(iter(row["experiments"].values()))["runs"][mr]
        answer = run["labels"][0]["annotations"]["classifications"][0]["radio_answer"]["name"]
        return run["split"].lower() == "test" and answer == "plot"

    export.write_text("".join(json.dumps(r) + "\n" for r in rows if not is_test_plot(r)))
    run_id = dev.webhook(mr, delivery_id=fresh_id("d"))["run_id"]
    run = _wait(dev, run_id, timeout=120)
    assert run["status"] == "FAILED"
    assert run["error"]["stage"] == "etl"
    assert "plot" in run["error"]["message"] and "test" in run["error"]["message"]
    last = dev.statuses(mr)[-1]
    assert last["status"] == "FAILED" and "plot" in last["error_message"] and len(last["error_message"]) <= 255
    assert [s["state"] for s in run["steps"]] == ["FAILED", "PENDING", "PENDING", "PENDING"]


def test_bad_requests_are_refused_with_reasons(dev: Dev):
    body = json.dumps({"modelRunId": "x", "modelType": "no_such_type"}).encode()
    from lbtrain import signature

    for raw, headers, status, text in [
        (body, {}, 401, "missing signature"),
        (body, {"X-Hub-Signature": "sha1=00"}, 401, "does not match"),
        (b"{not json", signature.headers(SECRET, b"{not json"), 400, "malformed JSON"),
        (body, signature.headers(SECRET, body), 400, "unknown model type 'no_such_type'"),
    ]:
        with pytest.raises(ApiError) as err:
            Client(dev.url, retries=0).request("POST", "/model_run", raw=raw, headers=headers)
        assert err.value.status == status and text in err.value.message
    with pytest.raises(ApiError) as err:
        Client(dev.url, retries=0).request("GET", "/runs")
    assert err.value.status == 401


def test_no_secret_in_logs_documents_or_files(dev: Dev):
    """Runs last in this module: everything the earlier runs wrote is scanned for the secrets."""
    runs = dev.api.list_runs(limit=500)["runs"]
    assert len(runs) >= 3
    documents = json.dumps([dev.api.get_run(r["run_id"]) for r in runs])
    leaked = []
    for path in dev.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            leaked += [f"{path}: {name}" for name, secret in (("token", TOKEN), ("secret", SECRET))
                       if secret.encode() in data]
    assert leaked == []
    assert TOKEN not in documents and SECRET not in documents
    assert (dev.root / "dev.log").stat().st_size > 0 and any(dev.root.rglob("job.log"))
