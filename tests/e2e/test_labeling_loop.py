"""The labeling loop through the whole local stack (`lbtrain dev`, emulators, real jobs, file Labelbox):
label webhooks fire a retraining rule → its run trains, deploys and pre-labels the project's unlabeled
rows with queue priorities → simulated labelers label the front of the queue (true labels from the
hidden ground truth) → their label webhooks fire the next run, which pre-labels what is still unlabeled."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from lbtrain import datasets
from lbtrain.adapters.labelbox import FileLabelbox
from tests.conftest import fresh_id
from tests.e2e.conftest import SECRET, Dev

MODEL_TYPE = "text_single_classification"
LABEL_WEBHOOKS = Path(__file__).resolve().parents[1] / "data" / "label_webhooks"
ROWS, SEED_LABELS, BATCH = 700, 400, 60


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _label_webhook(dev: Dev, project_id: str, label_id: str, data_row_id: str) -> dict[str, Any]:
    body = json.loads((LABEL_WEBHOOKS / "label_created.json").read_text())
    body["project"]["id"], body["id"], body["dataRow"]["id"] = project_id, label_id, data_row_id
    status, answer = dev.api.send_webhook("/webhooks/labelbox", body, SECRET, delivery_id=fresh_id("lw"),
                                          event="LABEL_CREATED")
    assert status == 200, answer
    return answer


def _check_prelabel_run(dev: Dev, run: dict[str, Any], project_id: str, unlabeled: set[str]) -> dict[str, int]:
    lb = FileLabelbox(dev.labelbox_dir)
    assert run["status"] == "SUCCEEDED", json.dumps(run, indent=1, default=str)
    assert [s["stage"] for s in run["steps"]][-2:] == ["deploy", "prelabel"]
    assert run["steps"][-1]["state"] == "SUCCEEDED"
    counts = run["prelabel"]
    assert counts["unlabeled"] == counts["predicted"] == counts["prioritised"] == len(unlabeled), counts
    # Pre-labels: radio answers for unlabeled rows only, in imports named after the run.
    imports = {n: rows for n, rows in lb.prelabels(project_id).items() if run["run_id"] in n}
    annotations = [a for rows in imports.values() for a in rows]
    assert len(imports) == counts["imports"] >= 1 and len(annotations) == counts["prelabels"]
    assert {a["dataRow"]["id"] for a in annotations} <= unlabeled
    assert all(a["name"] == "category" and set(a["answer"]) == {"name"} for a in annotations)
    return counts


def test_label_webhooks_to_prelabels_to_labels_to_the_next_run(dev: Dev, tmp_path: Path) -> None:
    project_id, model_id = fresh_id("proj"), fresh_id("model")
    datasets.build_project(MODEL_TYPE, str(dev.labelbox_dir), project_id, limit=ROWS)
    export = dev.labelbox_dir / "projects" / project_id / "export.ndjson"
    rows = _rows(export)
    assert len(rows) == ROWS
    # Hide the labels of all but the seed: the ground truth the simulated labelers answer from.
    truth = {r["data_row"]["id"]: r["projects"][project_id]["labels"] for r in rows}
    for r in rows[SEED_LABELS:]:
        r["projects"][project_id]["labels"] = []
    _write(export, rows)
    unlabeled = {r["data_row"]["id"] for r in rows[SEED_LABELS:]}

    # One run per BATCH labels: the labelers' batch makes exactly one follow-up run.
    dev.cli("triggers", "set", project_id, "--model-type", MODEL_TYPE, "--model-id", model_id,
            "--min-labels", str(BATCH))
    answers = [_label_webhook(dev, project_id, truth[r["data_row"]["id"]][0]["id"], r["data_row"]["id"])
               for r in rows[:BATCH]]
    assert [a["outcome"] for a in answers] == ["counted"] * (BATCH - 1) + ["held"]
    run_id = answers[-1]["run_id"]
    first = dev.api.wait(run_id, timeout=900, interval=1.0)
    counts = _check_prelabel_run(dev, first, project_id, unlabeled)
    priorities = FileLabelbox(dev.labelbox_dir).priorities(project_id)
    assert set(priorities) == unlabeled and sorted(priorities.values()) == list(range(1, len(unlabeled) + 1))
    assert counts["prelabeled_rows"] > 0  # a trained text model is sure of some rows

    # The labelers take the front of the queue and label it from the ground truth …
    queue = sorted(unlabeled, key=priorities.__getitem__)[:BATCH]
    by_id = {r["data_row"]["id"]: r for r in rows}
    for row_id in queue:
        by_id[row_id]["projects"][project_id]["labels"] = truth[row_id]
    _write(export, rows)
    # … and Labelbox tells lbtrain: one webhook per label; the batch's last starts the next run.
    outcomes = [_label_webhook(dev, project_id, truth[row_id][0]["id"], row_id)["outcome"] for row_id in queue]
    assert outcomes == ["counted"] * (BATCH - 1) + ["held"], outcomes
    runs = [r for r in dev.api.list_runs(limit=50)["runs"] if (r.get("trigger") or {}).get("project_id") == project_id]
    assert len(runs) == 2 and runs[0]["run_id"] != run_id
    second = dev.api.wait(runs[0]["run_id"], timeout=900, interval=1.0)
    _check_prelabel_run(dev, second, project_id, unlabeled - set(queue))
    # Its model learned from the seed and the labeled queue: more examples than the first run.
    assert second["examples"] == first["examples"] + BATCH
    # The second run re-ranked exactly the rows still unlabeled.
    after = FileLabelbox(dev.labelbox_dir).priorities(project_id)
    assert sorted(after[r] for r in unlabeled - set(queue)) == list(range(1, len(unlabeled) - BATCH + 1))

    # The dashboard shows each run's pre-labels and the model type's quality by number of labels.
    page = _get(f"{dev.url}/dashboard/runs/{second['run_id']}")
    assert 'id="run-prelabel"' in page and f"of {len(unlabeled) - BATCH} unlabeled rows of project" in page
    model_page = _get(f"{dev.url}/dashboard/models/{MODEL_TYPE}")
    for run in (first, second):
        assert f'data-run="{run["run_id"]}" data-labels="{run["examples"]}"' in model_page


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - the local dev stack
        return resp.read().decode()
