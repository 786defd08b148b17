"""Every model type's whole pipeline through the emulators: reference data (small), a signed
webhook, ETL → train → evaluate → deploy, predictions and statuses in Labelbox's formats."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from lbtrain import pipelines
from lbtrain.datasets import MODULES
from tests.conftest import fresh_id
from tests.e2e.conftest import Dev

# Small data and short training: this checks the plumbing of each type, not its quality
# (bench/quality.py measures that on the full reference data).
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "text_multi_classification": ("200", {"C": [10]}),
    "ner": ("200", {"c1": [0.2], "c2": [0.1], "max_iterations": 30}),
    "image_single_classification": ("300", {"epochs": 2}),
    "image_multi_classification": ("300", {"epochs": 2}),
    "bounding_box": ("120", {"epochs": 3, "max_seconds": 30.0, "score_threshold": 0.05}),
}


def test_every_registered_type_with_a_dataset_is_covered():
    assert set(pipelines.names()) - {"text_single_classification"} == set(CASES)
    assert set(CASES) <= set(MODULES)


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_model_type_end_to_end(dev: Dev, model_type: str):
    limit, params = CASES[model_type]
    mr = fresh_id("mr")
    summary = dev.build(mr, "--limit", limit, model_type=model_type)
    run = dev.api.start_run(model_type, mr, params=params)
    run = dev.api.wait(run["run_id"], timeout=600, interval=0.5)
    assert run["status"] == "SUCCEEDED", json.dumps(run, indent=1)[:3000]
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED"] * 4

    metric = pipelines.get(model_type).headline_metric
    value = run["metrics"][metric]
    assert isinstance(value, float) and 0.0 <= value <= 1.0

    assert [s["status"] for s in dev.statuses(mr)] == ["EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL",
                                                       "COMPLETE"]
    uploads = list((dev.model_run_dir(mr) / "predictions").glob("*.ndjson"))
    assert len(uploads) == 1
    rows = [json.loads(line) for line in uploads[0].read_text().splitlines()]
    predictions = [r for r in rows if "aggregation" not in r]
    metric_rows = [r for r in rows if r.get("aggregation") == "CONFUSION_MATRIX"]
    assert predictions and metric_rows
    assert all(len(r["metricValue"]) == 4 for r in metric_rows)
    ids = {r["dataRow"]["id"] for r in predictions}
    assert len(ids) <= summary["rows"]
    for r in predictions:
        if "answer" in r:  # radio / checklist
            answers = r["answer"] if isinstance(r["answer"], list) else [r["answer"]]
            assert all(0.0 <= a["confidence"] <= 1.0 for a in answers)
        elif "bbox" in r:
            assert set(r["bbox"]) == {"top", "left", "height", "width"} and 0.0 <= r["confidence"] <= 1.0
        else:
            assert "location" in r and r["location"]["end"] >= r["location"]["start"]

    deployment = run["deployment"]
    assert deployment["deployed"] is True and deployment["endpoint"].startswith("http://127.0.0.1:")
    with urllib.request.urlopen(deployment["endpoint"].rsplit("/", 1)[0] + "/health", timeout=10) as resp:
        assert resp.status == 200
