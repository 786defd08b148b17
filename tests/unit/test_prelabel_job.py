"""`python -m jobs.main --stage prelabel` for each of the six model types, as the local launcher runs it:
a model trained on a small reference dataset pre-labels a project's unlabeled rows in Labelbox's
annotation-import shapes and writes their queue priorities; a retried attempt imports nothing twice."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lbtrain import datasets
from lbtrain.adapters.labelbox import FileLabelbox
from tests.unit.image_fixtures import JobEnv

SMALL = {"LBTRAIN_MIN_EXAMPLES": "train=1,validation=0,test=0"}
CASES = {  # model type: (reference rows, train params)
    "text_single_classification": (160, {}),
    "text_multi_classification": (160, {}),
    "ner": (160, {}),
    "image_single_classification": (120, {"epochs": 2, "threads": 1}),
    "image_multi_classification": (120, {"epochs": 2, "threads": 1}),
    "bounding_box": (80, {"epochs": 30, "width": 16, "lr": 0.004, "input_size": 64, "threads": 1,
                          "score_threshold": 0.01}),
}
UNLABELED, BATCH = 24, 7


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _project(env: JobEnv, project_id: str) -> dict[str, dict[str, Any]]:
    """The model run's first rows as a project's *unlabeled* rows (the same media)."""
    rows = [json.loads(line) for line in (env.labelbox / "model_runs" / env.model_run_id / "export.ndjson")
            .read_text().splitlines()[:UNLABELED]]
    d = env.labelbox / "projects" / project_id
    d.mkdir(parents=True)
    with (d / "export.ndjson").open("w") as fh:
        for row in rows:
            row.pop("experiments", None)
            row["projects"] = {project_id: {"name": "p", "labels": []}}
            fh.write(json.dumps(row) + "\n")
    return {r["data_row"]["id"]: r for r in rows}


def _check_shape(model_type: str, ann: dict[str, Any], classes: set[str], rows: dict[str, dict[str, Any]]) -> None:
    assert set(ann) == {"uuid", "dataRow", "name", {"text_single_classification": "answer",
                                                     "image_single_classification": "answer",
                                                     "text_multi_classification": "answer",
                                                     "image_multi_classification": "answer",
                                                     "bounding_box": "bbox", "ner": "location"}[model_type]}
    assert ann["dataRow"]["id"] in rows and ann["name"]
    if model_type.endswith("single_classification"):
        assert set(ann["answer"]) == {"name"} and ann["answer"]["name"] in classes
    elif model_type.endswith("multi_classification"):
        names = [a["name"] for a in ann["answer"]]
        assert names and set(names) <= classes and names == sorted(set(names))
    elif model_type == "bounding_box":
        box = ann["bbox"]
        assert set(box) == {"top", "left", "height", "width"} and box["width"] > 0 and box["height"] > 0
        assert ann["name"] in classes
    else:
        text = rows[ann["dataRow"]["id"]]["data_row"]["row_data"]
        start, end = ann["location"]["start"], ann["location"]["end"]
        assert 0 <= start <= end < len(text.encode("utf-16-le")) // 2  # inclusive end, UTF-16 units at most
        assert ann["name"] in classes


def _sdk_model(ann: dict[str, Any]) -> Any:
    from labelbox.data.serialization.ndjson.classification import NDChecklist, NDRadio
    from labelbox.data.serialization.ndjson.objects import NDRectangle, NDTextEntity

    if "answer" in ann:
        return NDChecklist if isinstance(ann["answer"], list) else NDRadio
    return NDRectangle if "bbox" in ann else NDTextEntity


@pytest.mark.parametrize("model_type", list(CASES))
def test_prelabel_job(model_type: str, tmp_path: Path) -> None:
    limit, params = CASES[model_type]
    env = JobEnv(tmp_path, model_type, model_run_id="mr-pre")
    datasets.build(model_type, str(env.labelbox), env.model_run_id, limit=limit)
    for stage in ("etl", "train"):
        _ok(env.run("r1", stage, params, env=SMALL))
    # deploy is not under test here: its manifest, as a deploy that kept the champion writes it.
    deploy = env.out("r1", "deploy")
    deploy.mkdir(parents=True)
    (deploy / "outputs.json").write_text(json.dumps({"metrics": {"deployed": False, "reason": "not under test"}}))
    rows = _project(env, "proj1")
    settings = {"project_id": "proj1", "min_confidence": 0.0, "batch_size": BATCH, "random_share": 0.25}
    _ok(env.run("r1", "prelabel", {**params, "prelabel": settings}, env=SMALL))

    metrics = env.outputs("r1", "prelabel")["metrics"]
    assert metrics["unlabeled"] == metrics["predicted"] == metrics["prioritised"] == UNLABELED, metrics
    assert metrics["failed_rows"] == 0 and metrics["model_deployed"] is False
    lb = FileLabelbox(env.labelbox)
    priorities = lb.priorities("proj1")
    assert set(priorities) == set(rows) and sorted(priorities.values()) == list(range(1, UNLABELED + 1))
    imports = lb.prelabels("proj1")
    annotations = [a for name in sorted(imports) for a in imports[name]]
    assert len(annotations) == metrics["prelabels"] and len(imports) == metrics["imports"]
    assert len(imports) == math.ceil(len(annotations) / BATCH)
    assert all(name.startswith("lbtrain-r1-prelabels-") for name in imports)
    assert len({a["uuid"] for a in annotations}) == len(annotations)
    classes = set(json.loads((env.out("r1", "etl") / "label_map.json").read_text())["classes"])
    for ann in annotations:
        _check_shape(model_type, ann, classes, rows)
        _sdk_model(ann).model_validate(ann)  # the labelbox SDK's own annotation-import model accepts it
    if "single" in model_type:  # at confidence 0 every row gets its most likely class
        assert metrics["prelabeled_rows"] == UNLABELED
    else:
        assert metrics["prelabeled_rows"] >= 1, metrics

    # A retried attempt (the first one's answer lost) finds its imports by name: nothing twice.
    before = {p.name: p.stat().st_mtime_ns for p in (env.labelbox / "projects" / "proj1" / "prelabels").iterdir()}
    _ok(env.run("r1", "prelabel", {**params, "prelabel": settings}, env=SMALL, attempt=2))
    after = {p.name: p.stat().st_mtime_ns for p in (env.labelbox / "projects" / "proj1" / "prelabels").iterdir()}
    assert after == before
    assert lb.priorities("proj1") == priorities  # the same model and seed: the same queue
