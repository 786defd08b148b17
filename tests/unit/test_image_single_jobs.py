"""`python -m jobs.main` etl → train → evaluate → deploy for image_single_classification on a
small MNIST subset, as the local job backend runs it (subprocesses, file-backed Labelbox)."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from jobs import serving
from lbtrain import datasets
from tests.unit.image_fixtures import JobEnv, has_nested_array

MT = "image_single_classification"
PARAMS = {"epochs": 6, "threads": 1}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    e = JobEnv(tmp_path_factory.mktemp("img-single-jobs"), MT)
    datasets.build(MT, str(e.labelbox), e.model_run_id, limit=200)
    yield e
    serving.stop_all(str(e.artifacts))


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pipeline_etl_train_evaluate_deploy(env: JobEnv) -> None:
    for stage in ("etl", "train", "evaluate"):
        _ok(env.run("r1", stage, PARAMS))
    etl = env.outputs("r1", "etl")["metrics"]
    assert (etl["examples"], etl["train"], etl["fetched"], etl["fetch_failed"]) == (200, 140, 200, 0)
    assert len(list((env.out("r1", "etl") / "media").glob("*.png"))) == 200  # copied into the run
    train = env.outputs("r1", "train")["metrics"]
    assert train["train_size"] == 140 and train["image_size"] == 28 and train["channels"] == "L"
    progress = json.loads((env.out("r1", "train") / "progress.json").read_text())
    assert (progress["unit"], progress["metric"]) == ("epoch", "accuracy")
    assert progress["done"] == progress["total"] == train["epochs_run"]  # the last epoch, whatever ended it
    assert [p["done"] for p in progress["history"]] == list(range(1, train["epochs_run"] + 1))
    assert all(p["loss"] > 0 and 0 <= p["value"] <= 1 for p in progress["history"])
    metrics = env.outputs("r1", "evaluate")["metrics"]
    assert metrics["test_size"] == 30 and metrics["predicted_rows"] == 200
    assert metrics["accuracy"] > 0.3  # 10 classes: chance is 0.1 (6 epochs on 140 digits)
    assert not has_nested_array(metrics)
    uploaded = env.labelbox / "model_runs" / env.model_run_id / "predictions" / "lbtrain-r1-a1.ndjson"
    rows = [json.loads(line) for line in uploaded.open()]
    assert len(rows) == metrics["uploaded_rows"] == 200 + 10 * 30
    assert sum(1 for r in rows if "answer" in r) == 200

    _ok(env.run("r1", "deploy"))
    result = env.outputs("r1", "deploy")["metrics"]
    assert result["deployed"] is True
    png = next((env.out("r1", "etl") / "media").glob("*.png"))
    b64 = base64.b64encode(png.read_bytes()).decode()
    reply = serving.predict(result["endpoint"], [{"b64": b64}, {"image": {"b64": b64}}])
    assert len(reply["predictions"]) == 2 and reply["predictions"][0]["label"] in [str(d) for d in range(10)]
    assert serving.stop_all(str(env.artifacts)) == 1


def test_validation_failure_names_class_and_split(env: JobEnv) -> None:
    proc = env.run("strict", "etl", env={"LBTRAIN_MIN_EXAMPLES": "train=5,validation=1,test=4"})
    assert proc.returncode == 1
    error = json.loads((env.out("strict", "etl") / "error.json").read_text())
    assert error["type"] == "DatasetError"
    assert error["message"].startswith('too few examples: class "0" has 3 in split "test" (minimum 4)')
    assert (env.out("strict", "etl") / "stats.json").exists()
