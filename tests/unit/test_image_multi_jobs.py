"""`python -m jobs.main` etl → train → evaluate for image_multi_classification on a few MNIST
canvases, as the local job backend runs it."""

from __future__ import annotations

import json
import subprocess

import pytest

from lbtrain import datasets
from tests.unit.image_fixtures import JobEnv, has_nested_array

MT = "image_multi_classification"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    e = JobEnv(tmp_path_factory.mktemp("img-multi-jobs"), MT)
    datasets.build(MT, str(e.labelbox), e.model_run_id, limit=200)
    return e


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pipeline_etl_train_evaluate(env: JobEnv) -> None:
    for stage in ("etl", "train", "evaluate"):
        _ok(env.run("r1", stage, {"epochs": 3, "threads": 1}))
    etl = env.outputs("r1", "etl")["metrics"]
    assert (etl["examples"], etl["train"], etl["classes"], etl["mode"]) == (200, 140, 10, "checklist")
    train = env.outputs("r1", "train")["metrics"]
    assert train["image_size"] == 64 and 0.0 < train["threshold"] < 1.0
    metrics = env.outputs("r1", "evaluate")["metrics"]
    assert metrics["test_size"] == 30 and metrics["predicted_rows"] == 200
    assert set(metrics) >= {"micro_f1", "macro_f1", "subset_accuracy", "per_class"}
    assert metrics["micro_f1"] > 0.2  # ~2 of 10 digits per canvas: predicting all scores ~0.33 at best
    assert not has_nested_array(metrics)
    uploaded = env.labelbox / "model_runs" / env.model_run_id / "predictions" / "lbtrain-r1-a1.ndjson"
    rows = [json.loads(line) for line in uploaded.open()]
    checklists = [r for r in rows if "answer" in r]
    assert len(checklists) == 200 and all(r["name"] == "digits" and r["answer"] for r in checklists)
    assert len(rows) - len(checklists) == 10 * 30  # one confusion-matrix row per class per test row
