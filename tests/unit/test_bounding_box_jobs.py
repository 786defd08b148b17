"""bounding_box through `python -m jobs.main` (etl → train → evaluate), as the local job backend runs
it, on a tiny canvas model run; plus the validation failure naming class and split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lbtrain import datasets, storage
from tests.launcher_args import recorded_args
from tests.unit.test_jobs_main import _has_nested_array

MT = "bounding_box"
MR = "mr-bbox-jobs"
FAST = {"epochs": 1, "width": 8, "input_size": 64, "threads": 1}
SMALL = {"LBTRAIN_MIN_EXAMPLES": "train=1,validation=0,test=0"}  # 40 canvases cannot have 5 boxes of each digit


class Jobs:
    def __init__(self, root: Path):
        self.root = root
        self.artifacts = root / "artifacts"
        self.labelbox = root / "labelbox"

    def out(self, run_id: str, stage: str) -> Path:
        return Path(storage.run_dir(str(self.artifacts), run_id, stage, 1))

    def run(self, run_id: str, stage: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        before = {"etl": [], "train": ["etl"], "evaluate": ["etl", "train"]}[stage]
        inputs = self.root / "inputs" / f"{run_id}-{stage}.json"
        inputs.parent.mkdir(parents=True, exist_ok=True)
        inputs.write_text(
            json.dumps(
                {
                    "run_id": run_id,
                    "model_type": MT,
                    "model_run_id": MR,
                    "model_id": "m",
                    "params": FAST,
                    "stage": stage,
                    "attempt": 1,
                    "upstream": {s: str(self.out(run_id, s)) for s in before},
                }
            )
        )
        child_env = {
            **os.environ,
            "ARTIFACT_ROOT": str(self.artifacts),
            "LABELBOX_BACKEND": "file",
            "LABELBOX_DIR": str(self.labelbox),
            "JOB_BACKEND": "local",
            **(env or SMALL),
        }
        args = [sys.executable, "-m", "jobs.main", "--run-id", run_id, "--stage", stage, "--attempt", "1"]
        args += ["--inputs", str(inputs), "--outputs", str(self.out(run_id, stage))]
        args += recorded_args(stage, {s: str(self.out(run_id, s)) for s in before})
        return subprocess.run(args, env=child_env, capture_output=True, text=True, timeout=120)

    def outputs(self, run_id: str, stage: str) -> dict[str, Any]:
        return json.loads((self.out(run_id, stage) / "outputs.json").read_text())


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    j = Jobs(tmp_path_factory.mktemp("bbox-jobs"))
    summary = datasets.build(MT, str(j.labelbox), MR, limit=40)
    assert summary["per_split"] == {"train": 28, "validation": 6, "test": 6}
    return j


def test_etl_train_evaluate(jobs: Jobs) -> None:
    for stage in ("etl", "train", "evaluate"):
        proc = jobs.run("b1", stage)
        assert proc.returncode == 0, proc.stderr[-3000:]
    etl = jobs.outputs("b1", "etl")["metrics"]
    assert etl["examples"] == 40 and etl["classes"] >= 2 and etl["boxes"] >= 40 and etl["degenerate_boxes"] == 0
    assert (jobs.out("b1", "etl") / "media").is_dir()  # images copied into the run's artifacts
    train = jobs.outputs("b1", "train")
    assert train["metrics"]["train_size"] == 28 and "history" not in train["metrics"]
    assert (Path(train["uris"]["model"]) / "model.json").exists()
    progress = json.loads((jobs.out("b1", "train") / "progress.json").read_text())
    epochs = train["metrics"]["epochs_run"]
    assert (progress["unit"], progress["metric"], progress["done"]) == ("epoch", "map50", epochs)
    assert len(progress["history"]) == epochs and progress["history"][0]["loss"] > 0
    metrics = jobs.outputs("b1", "evaluate")["metrics"]
    assert 0.0 <= metrics["map50"] <= 1.0 and metrics["test_size"] == 6 and metrics["predicted_rows"] == 40
    assert not _has_nested_array(metrics)
    full = json.loads((jobs.out("b1", "evaluate") / "metrics.json").read_text())
    assert set(full["per_class"]) == set(metrics["per_class_ap50"])
    uploaded = jobs.labelbox / "model_runs" / MR / "predictions" / "lbtrain-b1-a1.ndjson"
    assert sum(1 for _ in uploaded.open()) == metrics["uploaded_rows"]


def test_too_few_boxes_fails_etl_naming_class_and_split(jobs: Jobs) -> None:
    proc = jobs.run("b2", "etl", env={"LBTRAIN_MIN_EXAMPLES": "train=1,validation=0,test=50"})
    assert proc.returncode == 1
    error = json.loads((jobs.out("b2", "etl") / "error.json").read_text())
    assert error["type"] == "DatasetError"
    assert error["message"].startswith('too few boxes: class "0" has ')
    assert 'in split "test" (minimum 50)' in error["message"]
    assert (jobs.out("b2", "etl") / "stats.json").exists()
