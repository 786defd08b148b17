"""The modelrun job (`python -m jobs.modelrun`) against the file-backed Labelbox: the job contract
(outputs.json with the model run id, error.json and exit 1 on a Labelbox failure, exit 2 for bad
inputs) and idempotence by name (run twice, one model run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import modelrun
from lbtrain import storage
from lbtrain.adapters.labelbox import FileLabelbox, model_run_id_for


@pytest.fixture
def labelbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileLabelbox:
    monkeypatch.setenv("LABELBOX_BACKEND", "file")
    monkeypatch.setenv("LABELBOX_DIR", str(tmp_path / "lb"))
    project = tmp_path / "lb" / "projects" / "proj-1"
    project.mkdir(parents=True)
    rows = [{"data_row": {"id": f"dr{i}", "row_data": f"text {i}"},
             "projects": {"proj-1": {"labels": [{"id": f"l{i}", "annotations": {}}]}}} for i in range(4)]
    (project / "export.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return FileLabelbox(tmp_path / "lb")


def run_job(tmp_path: Path, inputs: dict, attempt: int = 1) -> tuple[int, Path]:
    in_uri = str(tmp_path / f"inputs-a{attempt}.json")
    storage.write_json(in_uri, inputs)
    out = tmp_path / "runs" / "r1" / "modelrun" / f"a{attempt}"
    code = modelrun.main(["--run-id", "r1", "--stage", "modelrun", "--attempt", str(attempt), "--inputs", in_uri,
                          "--outputs", str(out)])
    return code, out


INPUTS = {"run_id": "r1", "model_type": "text_single_classification", "model_id": "model-1",
          "project_id": "proj-1", "model_run_name": "dev-r1", "stage": "modelrun", "attempt": 1}


def test_creates_the_model_run_and_names_it_in_outputs(labelbox: FileLabelbox, tmp_path: Path):
    code, out = run_job(tmp_path, INPUTS)
    assert code == 0
    outputs = json.loads((out / "outputs.json").read_text())
    mr = model_run_id_for("model-1", "dev-r1")
    assert outputs["model_run_id"] == mr and outputs["model_run_name"] == "dev-r1"
    assert [r["data_row"]["id"] for r in labelbox.export_rows(mr)] == ["dr0", "dr1", "dr2", "dr3"]

    again, out2 = run_job(tmp_path, {**INPUTS, "attempt": 2}, attempt=2)  # a relaunch finds it by name
    assert again == 0 and json.loads((out2 / "outputs.json").read_text())["model_run_id"] == mr
    assert [p.name for p in (tmp_path / "lb" / "model_runs").iterdir()] == [mr]


def test_a_labelbox_failure_is_exit_1_with_the_reason(labelbox: FileLabelbox, tmp_path: Path):
    code, out = run_job(tmp_path, {**INPUTS, "project_id": "proj-nope"})
    assert code == 1 and not (out / "outputs.json").exists()
    error = json.loads((out / "error.json").read_text())
    assert "project 'proj-nope' not found" in error["message"] and error["type"] == "ValueError"


def test_bad_inputs_are_exit_2(labelbox: FileLabelbox, tmp_path: Path):
    code, out = run_job(tmp_path, {**INPUTS, "project_id": ""})
    assert code == 2 and "project_id" in json.loads((out / "error.json").read_text())["message"]
    code, out = run_job(tmp_path, {**INPUTS, "run_id": "other"})
    assert code == 2 and "does not match --run-id" in json.loads((out / "error.json").read_text())["message"]
    assert modelrun.main(["--run-id", "r1", "--stage", "etl"]) == 2
