"""End to end with LABELBOX_BACKEND=sdk: `lbtrain dev` (ingress, launchers, local jobs) talks to
Labelbox through the real labelbox SDK, pointed at a local fake of the Labelbox API
(tests/fakes/labelbox_server.py) via LABELBOX_ENDPOINT. Everything Labelbox saw is asserted at
the fake: statuses, prediction uploads, and for retraining rules the model run created from the
project's labels with the hash splits.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain import datasets
from lbtrain.adapters.labelbox import split_for
from lbtrain.emulators import free_port
from tests.conftest import fresh_id
from tests.e2e.conftest import SECRET, TOKEN, Dev, dev_env, running_dev
from tests.fakes.labelbox_server import FakeLabelbox, serve

API_KEY = "e2e-labelbox-key-0123456789abcdef"
MODEL_TYPE = "text_single_classification"
LABEL_WEBHOOKS = Path(__file__).resolve().parents[1] / "data" / "label_webhooks"
STATUSES = ["EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL", "COMPLETE"]


@pytest.fixture(scope="module")
def sdk_dev(emulator_hosts: dict[str, str], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Dev, FakeLabelbox]]:
    root = tmp_path_factory.mktemp("e2e-lbsdk")
    fake = FakeLabelbox(chunk_lines=100)
    server = serve(fake)
    port = free_port()
    env = dev_env(root, port, emulator_hosts, LABELBOX_BACKEND="sdk", LABELBOX_API_KEY=API_KEY,
                  LABELBOX_ENDPOINT=f"{fake.base_url}/graphql")
    try:
        with running_dev(root, port, env, log_name="e2e-lbsdk-dev.log") as dev:
            yield dev, fake
    finally:
        server.shutdown()
        server.server_close()
    log = (root / "dev.log").read_text(errors="replace")
    assert API_KEY not in log and SECRET not in log


def _ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _predicted(fake: FakeLabelbox, model_run_id: str) -> set[str]:
    return {r["dataRow"]["id"] for u in fake.uploads if u["model_run_id"] == model_run_id
            for r in u["rows"] if "answer" in r}


def _wire_clean(fake: FakeLabelbox) -> None:
    wire = json.dumps([[r.query, r.variables] for r in fake.requests])
    assert TOKEN not in wire and SECRET not in wire
    assert {r.headers.get("authorization") for r in fake.requests if r.query} == {f"Bearer {API_KEY}"}


def test_model_run_webhook_runs_the_pipeline_against_labelbox(sdk_dev: tuple[Dev, FakeLabelbox],
                                                            tmp_path: Path) -> None:
    dev, fake = sdk_dev
    mr = fresh_id("mr")
    summary = datasets.build(MODEL_TYPE, str(tmp_path / "lb"), mr, limit=300)
    rows = _ndjson(tmp_path / "lb" / "model_runs" / mr / "export.ndjson")
    assert len(rows) == summary["rows"] == 300
    fake.add_model_run(mr, rows, model_id="e2e-model")

    started = dev.webhook(mr, delivery_id=fresh_id("delivery"))
    run = dev.api.wait(started["run_id"], timeout=600, interval=0.5)
    assert run["status"] == "SUCCEEDED", json.dumps(run, indent=1)
    assert run["model_run_id"] == mr

    # Labelbox saw the statuses in order (each through the SDK's experimental endpoint) and the predictions.
    assert [s["status"] for s in fake.statuses if s["model_run_id"] == mr] == STATUSES
    assert fake.statuses[-1]["metadata"]["lbtrain_run_id"] == run["run_id"]
    assert {r.path for r in fake.requests if r.operation == "setPipelineStatusPyApi"} == {"/_gql"}
    exports = [e["filters"] for e in fake.exports if e["filters"].get("modelRunId") == mr]
    assert exports == [{"modelRunId": mr}]  # the ETL job's
    assert _predicted(fake, mr) == {r["data_row"]["id"] for r in rows}
    metric_rows = [r for u in fake.uploads for r in u["rows"] if r.get("aggregation") == "CONFUSION_MATRIX"]
    assert metric_rows and all(len(r["metricValue"]) == 4 for r in metric_rows)
    _wire_clean(fake)


def _delivery(name: str, project_id: str, label_id: str, data_row_id: str) -> dict[str, Any]:
    body = json.loads((LABEL_WEBHOOKS / f"{name}.json").read_text())
    body["project"]["id"], body["id"], body["dataRow"]["id"] = project_id, label_id, data_row_id
    return body


def test_label_webhooks_fire_a_retraining_rule_on_a_new_model_run(sdk_dev: tuple[Dev, FakeLabelbox],
                                                                 tmp_path: Path) -> None:
    dev, fake = sdk_dev
    project_id, model_id = fresh_id("proj"), fresh_id("model")
    datasets.build_project(MODEL_TYPE, str(tmp_path / "lb"), project_id, limit=300)
    project_rows = _ndjson(tmp_path / "lb" / "projects" / project_id / "export.ndjson")
    fake.add_project(project_id, project_rows)
    fake.add_model(model_id)
    labeled = [r["data_row"]["id"] for r in project_rows if r["projects"][project_id]["labels"]]
    assert len(labeled) == 300

    out = dev.cli("triggers", "set", project_id, "--model-type", MODEL_TYPE, "--model-id", model_id,
                  "--min-labels", "3").stdout
    assert f"{project_id}: {MODEL_TYPE} (model {model_id}), every 3 new or changed labels" in out

    def send(topic: str, index: int, delivery_id: str) -> dict[str, Any]:
        row = project_rows[index]
        label_id = row["projects"][project_id]["labels"][0]["id"]
        name = {"LABEL_CREATED": "label_created", "LABEL_UPDATED": "label_updated"}[topic]
        status, answer = dev.api.send_webhook("/webhooks/labelbox", _delivery(name, project_id, label_id,
                                                                            row["data_row"]["id"]),
                                              SECRET, delivery_id=delivery_id, event=topic)
        assert status == 200, answer
        return answer

    outcomes = [
        send("LABEL_CREATED", 0, "lw-1"),
        send("LABEL_CREATED", 0, "lw-1"),  # redelivered
        send("LABEL_UPDATED", 0, "lw-2"),  # the same label updated…
        send("LABEL_UPDATED", 0, "lw-3"),  # …twice
        send("LABEL_CREATED", 1, "lw-4"),
        send("LABEL_CREATED", 1, "lw-4"),  # redelivered
        send("LABEL_CREATED", 2, "lw-5"),  # the third distinct label: the run starts
        send("LABEL_CREATED", 2, "lw-5"),  # redelivered after the start
    ]
    assert [o["outcome"] for o in outcomes] == ["counted", "duplicate", "already counted", "already counted",
                                                "counted", "duplicate", "held", "duplicate"]
    run_id = outcomes[6]["run_id"]
    # Released at once; the model run is created off the request, by the runs-topic release message.
    assert outcomes[6]["waiting"] in ("creating the Labelbox model run", "")
    run = dev.api.wait(run_id, timeout=600, interval=0.5)
    assert run["status"] == "SUCCEEDED", json.dumps(run, indent=1)
    assert [r["run_id"] for r in dev.api.list_runs(limit=50)["runs"] if (r.get("trigger") or {}).get(
        "project_id") == project_id] == [run_id]
    assert run["trigger"]["labels"] == 3 and run["model_id"] == model_id

    # The model run: created once under the rule's model, named after the run, holding the project's labels …
    mr = run["model_run_id"]
    assert fake.created_model_runs == [{"name": f"dev-{run_id}", "config": None, "modelId": model_id}]
    assert list(fake.model_runs_of(model_id)) == [mr]
    assert fake.label_registrations == [{"model_run_id": mr, "project_id": project_id}]
    # … with the splits the hash gives, each data row assigned once …
    sent = [(a["split"], d) for a in fake.split_assignments if a["model_run_id"] == mr for d in a["data_row_ids"]]
    assert sorted(d for _, d in sent) == sorted(labeled)
    assert all(split == split_for(d) for split, d in sent)
    per_split = Counter(split_for(d) for d in labeled)
    assert set(per_split) == {"TRAINING", "VALIDATION", "TEST"}
    # … which the ETL read back from the model run's export (the test split is what was evaluated).
    assert [e["filters"] for e in fake.exports if e["filters"].get("modelRunId") == mr] == [{"modelRunId": mr}] * 2
    # The run ended with its prelabel step: one export of the project's rows to label (none: all are
    # labeled), so no pre-labels were imported and no priorities set.
    assert [e["filters"]["projectId"] for e in fake.exports if "projectId" in e["filters"]] == [project_id]
    assert [s["stage"] for s in run["steps"]][-1] == "prelabel" and run["prelabel"]["unlabeled"] == 0
    assert fake.projects[project_id].imports == {} and fake.projects[project_id].priorities == {}
    assert run["metrics"]["test_size"] == per_split["TEST"]

    # Labelbox saw the statuses and the predictions on that new model run.
    statuses = [s for s in fake.statuses if s["model_run_id"] == mr]
    assert [s["status"] for s in statuses] == STATUSES
    assert statuses[0]["metadata"]["trigger"] == f"labels in project {project_id}"
    assert _predicted(fake, mr) == set(labeled)
    _wire_clean(fake)
