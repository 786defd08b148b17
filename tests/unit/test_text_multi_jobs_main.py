"""`python -m jobs.main` etl → train → evaluate → deploy for text_multi_classification on a tiny WNUT-16
subset, in subprocesses as the local job backend runs it. `Pipeline` is shared with the ner test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobs import serving
from lbtrain import datasets, storage
from tests.launcher_args import recorded_args

MR = "mr-wnut"


class Pipeline:
    """A file-backed Labelbox with one model run + an artifact root; runs one stage like the launcher."""

    def __init__(self, root: Path, model_type: str, limit: int):
        self.root, self.model_type = root, model_type
        self.artifacts, self.labelbox = root / "artifacts", root / "labelbox"
        self.summary = datasets.build(model_type, str(self.labelbox), MR, limit=limit)

    def out(self, run_id: str, stage: str) -> Path:
        return Path(storage.run_dir(str(self.artifacts), run_id, stage, 1))

    def run(
        self, run_id: str, stage: str, params: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        before = {"etl": [], "train": ["etl"], "evaluate": ["etl", "train"], "deploy": ["etl", "train", "evaluate"]}
        inputs = self.root / "inputs" / f"{run_id}-{stage}.json"
        inputs.parent.mkdir(parents=True, exist_ok=True)
        inputs.write_text(json.dumps({
            "run_id": run_id, "model_type": self.model_type, "model_run_id": MR, "model_id": "m",
            "params": params or {}, "stage": stage, "attempt": 1,
            "upstream": {s: str(self.out(run_id, s)) for s in before[stage]},
        }))
        child_env = {**os.environ, "ARTIFACT_ROOT": str(self.artifacts), "LABELBOX_BACKEND": "file",
                     "LABELBOX_DIR": str(self.labelbox), "JOB_BACKEND": "local", **(env or {})}
        args = [sys.executable, "-m", "jobs.main", "--run-id", run_id, "--stage", stage, "--attempt", "1",
                "--inputs", str(inputs), "--outputs", str(self.out(run_id, stage)),
                *recorded_args(stage, {s: str(self.out(run_id, s)) for s in before[stage]})]
        return subprocess.run(args, env=child_env, capture_output=True, text=True, timeout=120)

    def ok(self, run_id: str, stage: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        proc = self.run(run_id, stage, params)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((self.out(run_id, stage) / "outputs.json").read_text())["metrics"]

    def uploaded(self, run_id: str) -> list[dict[str, Any]]:
        path = self.labelbox / "model_runs" / MR / "predictions" / f"lbtrain-{run_id}-a1.ndjson"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def nested_array(value: Any, in_array: bool = False) -> bool:
    if isinstance(value, list):
        return in_array or any(nested_array(v, True) for v in value)
    if isinstance(value, dict):
        return any(nested_array(v) for v in value.values())
    return False


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    p = Pipeline(tmp_path_factory.mktemp("tm"), "text_multi_classification", limit=160)
    yield p
    serving.stop_all(str(p.artifacts))


def test_etl_train_evaluate_deploy(pipe: Pipeline) -> None:
    etl = pipe.ok("r1", "etl")
    assert etl["examples"] == 160 and etl["classes"] == 10 and etl["mode"] == "checklist"
    train = pipe.ok("r1", "train", {"C": [3.0, 30.0]})
    assert train["train_size"] == 112 and train["C"] in (3.0, 30.0)
    progress = json.loads((pipe.out("r1", "train") / "progress.json").read_text())
    assert (progress["unit"], progress["done"], progress["total"], progress["metric"]) == ("fit", 3, 3, "micro_f1")
    assert [p["value"] is not None for p in progress["history"]] == [True, True, False]  # 2 C values, the refit
    metrics = pipe.ok("r1", "evaluate")
    assert {"micro_f1", "macro_f1", "subset_accuracy", "per_class"} <= set(metrics)
    assert metrics["test_size"] == 24 and metrics["predicted_rows"] == 160
    assert 0.0 <= metrics["micro_f1"] <= 1.0 and not nested_array(metrics)
    rows = pipe.uploaded("r1")
    assert len(rows) == metrics["uploaded_rows"] == 160 - metrics["empty_prediction_rows"] + 10 * 24
    assert {r["dataRow"]["id"] for r in rows if "answer" in r} <= {
        json.loads(line)["data_row_id"] for line in (pipe.out("r1", "etl") / "dataset.jsonl").open()
    }
    deploy = pipe.ok("r1", "deploy")
    assert deploy["deployed"] is True
    reply = serving.predict(deploy["endpoint"], ["Watching the Lakers game in Los Angeles", {"text": "hi"}])
    assert len(reply["predictions"]) == 2 and len(reply["predictions"][0]["scores"]) == 10
    serving.stop_all(str(pipe.artifacts))


def test_validation_failure_names_class_and_split(pipe: Pipeline) -> None:
    proc = pipe.run("strict2", "etl", env={"LBTRAIN_MIN_EXAMPLES": "test=50"})
    assert proc.returncode == 1
    error = json.loads((pipe.out("strict2", "etl") / "error.json").read_text())
    assert error["type"] == "DatasetError"
    assert error["message"].startswith('too few examples: class "company" has ')
    assert 'in split "test" (minimum 50)' in error["message"]
    assert (pipe.out("strict2", "etl") / "stats.json").exists()
