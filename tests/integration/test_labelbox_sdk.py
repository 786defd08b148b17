"""LABELBOX_BACKEND=sdk at the HTTP wire: the real `labelbox.Client` (7.x) talks to a local fake
of the Labelbox API (tests/fakes/labelbox_server.py); assertions are on what crossed the wire.

The GraphQL texts the SDK sends are compared with tests/data/labelbox_sdk/<operation>.graphql,
so an SDK upgrade that changes an operation fails here (re-record them from the fake's
`queries()` after checking the fake still answers the new shape).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain.adapters.labelbox import ModelRunNotFound, PredictionUploadError, from_config
from lbtrain.adapters.labelbox_sdk import LabelboxApiError, SdkLabelbox
from lbtrain.config import Config
from tests.fakes.labelbox_server import FakeLabelbox
from tests.labelbox_sdk_helpers import API_KEY, sdk_adapter, served
from tests.launcher_args import recorded_args

DATA = Path(__file__).resolve().parent.parent / "data"
GOLDEN_QUERIES = DATA / "labelbox_sdk"
MR = "mr-golden"


def golden_rows() -> list[dict[str, Any]]:
    text = (DATA / "export_text_single.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]  # rows hold U+2028: not splitlines


def prediction(i: int) -> dict[str, Any]:
    return {"name": "sentiment", "answer": {"name": "positive", "confidence": 0.75}, "dataRow": {"id": f"dr{i:02d}"}}


@pytest.fixture()
def fake() -> Iterator[FakeLabelbox]:
    fake = FakeLabelbox()
    fake.add_model_run(MR, golden_rows())
    with served(fake):
        yield fake


adapter = sdk_adapter


# -- export --------------------------------------------------------------------------------

def test_export_streams_the_golden_rows_back(fake: FakeLabelbox) -> None:
    rows = adapter(fake).export_rows(MR)
    assert not isinstance(rows, list)
    first = next(rows)
    assert first == golden_rows()[0]
    assert [first, *rows] == golden_rows()
    (export,) = fake.exports
    assert export["filters"] == {"modelRunId": MR}
    assert export["params"]["includeModelRunDetails"] is True and export["params"]["includePredictions"] is False
    assert export["streamable"] is True
    # 19 rows in files of 3 lines: the SDK paged through 7 signed-URL-style files the fake served
    assert fake.operations().count("GetExportFileFromOffsetPyApi") == 7 == fake.operations().count("GET files")
    assert {r.headers["authorization"] for r in fake.requests if r.query} == {f"Bearer {API_KEY}"}


def test_an_empty_model_run_exports_no_rows(fake: FakeLabelbox) -> None:
    fake.add_model_run("mr-empty", [])
    assert list(adapter(fake).export_rows("mr-empty")) == []
    assert "GetExportFileFromOffsetPyApi" not in fake.operations()


def test_export_waits_for_a_running_task(fake: FakeLabelbox) -> None:
    fake.model_runs[MR].export_polls_in_progress = 1  # the SDK polls every 2 s
    assert list(adapter(fake).export_rows(MR)) == golden_rows()
    assert fake.operations().count("GetUserCreatedTasksPyApi") == 2


def test_export_with_errors_fails_naming_the_model_run(fake: FakeLabelbox) -> None:
    fake.model_runs[MR].export_errors = [{"data_row_id": "dr05", "message": "media attributes unavailable"}]
    with pytest.raises(LabelboxApiError, match=rf"export of model run {MR} .*reported errors: 1 error.*dr05"):
        list(adapter(fake).export_rows(MR))


def test_failed_export_task_is_a_clear_failure(fake: FakeLabelbox) -> None:
    fake.model_runs[MR].export_status = "FAILED"
    with pytest.raises(LabelboxApiError, match=rf"export of model run {MR} \(task .*\) ended FAILED"):
        list(adapter(fake).export_rows(MR))


def test_an_export_file_that_fails_once_is_fetched_again(fake: FakeLabelbox) -> None:
    fake.fail("GET /files", 503)
    assert list(adapter(fake).export_rows(MR)) == golden_rows()


def test_unknown_model_run(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    with pytest.raises(ModelRunNotFound, match="'mr-nope' not found in Labelbox"):
        list(lb.export_rows("mr-nope"))
    with pytest.raises(ModelRunNotFound):
        lb.update_status("mr-nope", "COMPLETE")
    with pytest.raises(ModelRunNotFound):
        lb.upload_predictions("mr-nope", "up", [prediction(1)])
    assert set(fake.operations()) == {"GetModelRunPyApi"}


# -- status --------------------------------------------------------------------------------

def test_update_status_sends_status_metadata_and_a_clipped_message(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    lb.update_status(MR, "TRAINING_MODEL", metadata={"lbtrain_run_id": "r1", "attempt": 2})  # type: ignore[dict-item]
    link = "https://console.cloud.google.com/logs/query;query=labels.run_id%3D%22r1%22?project=demo"
    lb.update_status(MR, "FAILED", error_message="train failed:\n" + "Traceback line\n" * 80 + f"logs: {link}")
    first, failed = fake.statuses
    assert first == {"model_run_id": MR, "status": "TRAINING_MODEL",
                     "metadata": {"lbtrain_run_id": "r1", "attempt": "2"}, "errorMessage": None}
    assert failed["status"] == "FAILED" and failed["metadata"] is None
    message = failed["errorMessage"]
    assert len(message) <= 255 and message.startswith("train failed: Traceback line") and message.endswith(link)
    assert "…" in message and "\n" not in message
    assert [r.path for r in fake.requests if r.operation == "setPipelineStatusPyApi"] == ["/_gql", "/_gql"]


def test_unknown_status_is_refused_before_any_call(fake: FakeLabelbox) -> None:
    with pytest.raises(ValueError, match="unknown Labelbox status 'DONE'"):
        adapter(fake).update_status(MR, "DONE")
    assert fake.requests == []


@pytest.mark.parametrize("body", [{"message": "You have exceeded the API limit"}, {"message": "Too Many Requests"}])
def test_a_429_then_success_is_retried(fake: FakeLabelbox, body: dict[str, str]) -> None:
    fake.fail("setPipelineStatusPyApi", 429, body=body)
    adapter(fake).update_status(MR, "PREPARING_DATA")
    assert fake.operations().count("setPipelineStatusPyApi") == 2
    assert [s["status"] for s in fake.statuses] == ["PREPARING_DATA"]


def test_a_persistent_429_gives_up_after_a_few_attempts(fake: FakeLabelbox) -> None:
    fake.fail("GetModelRunPyApi", 429, times=100)
    with pytest.raises(LabelboxApiError, match=rf"lookup of model run {MR} failed after 3 attempts: ApiLimitError"):
        adapter(fake, attempts=3).update_status(MR, "COMPLETE")
    assert fake.operations() == ["GetModelRunPyApi"] * 3


def test_a_5xx_is_retried_by_the_sdk_alone(fake: FakeLabelbox) -> None:
    fake.fail("GetModelRunPyApi", 503)  # the SDK's own retry waits ~1 s, ours does not add a second layer
    adapter(fake).update_status(MR, "COMPLETE")
    assert fake.operations() == ["GetModelRunPyApi", "GetModelRunPyApi", "setPipelineStatusPyApi"]


def test_a_graphql_error_is_not_retried(fake: FakeLabelbox) -> None:
    fake.fail("setPipelineStatusPyApi", 200, body={"errors": [
        {"message": "model run is archived", "extensions": {"code": "OPERATION_NOT_ALLOWED"}}]})
    with pytest.raises(LabelboxApiError, match=f"status COMPLETE for model run {MR} failed: .*archived"):
        adapter(fake).update_status(MR, "COMPLETE")
    assert fake.operations().count("setPipelineStatusPyApi") == 1


# -- predictions ---------------------------------------------------------------------------

def test_predictions_are_uploaded_in_batches(fake: FakeLabelbox) -> None:
    rows = [prediction(i) for i in range(10)]
    adapter(fake, batch_rows=4).upload_predictions(MR, "lbtrain-r1-a1", rows)
    assert [u["name"] for u in fake.uploads] == ["lbtrain-r1-a1", "lbtrain-r1-a1-p2", "lbtrain-r1-a1-p3"]
    assert [len(u["rows"]) for u in fake.uploads] == [4, 4, 2]
    assert [r for u in fake.uploads for r in u["rows"]] == rows
    assert fake.uploads[0]["file_name"] == f"{MR}__lbtrain-r1-a1.ndjson"


def test_batches_are_also_cut_by_bytes(fake: FakeLabelbox) -> None:
    rows = [prediction(i) for i in range(6)]
    one_row = len(json.dumps(rows[0])) + 1
    adapter(fake, batch_bytes=2 * one_row).upload_predictions(MR, "up", rows)
    assert [len(u["rows"]) for u in fake.uploads] == [2, 2, 2]


def test_an_import_is_polled_until_finished(fake: FakeLabelbox) -> None:
    fake.model_runs[MR].import_polls_running = 3
    adapter(fake).upload_predictions(MR, "up", [prediction(1)])
    assert fake.operations().count("getModelErrorAnalysisPredictionImportPyApi") == 4


def test_an_import_with_row_errors_is_reported(fake: FakeLabelbox) -> None:
    fake.model_runs[MR].reject_rows = {1: "Feature schema 'sentiment' not found in the ontology"}
    rows = [prediction(i) for i in range(5)]
    with pytest.raises(PredictionUploadError) as info:
        adapter(fake, batch_rows=2).upload_predictions(MR, "up", rows)
    err = info.value
    assert (err.failed, err.total, err.uploads) == (2, 5, ["up", "up-p2", "up-p3"])  # row 1 of each batch of 2
    assert "rejected 2 of 5 prediction rows" in str(err) and "data row dr01: Feature schema" in str(err)
    assert len(fake.uploads) == 3  # every batch was still tried


def test_no_api_key_in_any_log_line(fake: FakeLabelbox, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lb = adapter(fake)
    fake.fail("setPipelineStatusPyApi", 429)
    lb.update_status(MR, "FAILED", error_message="boom")
    assert len(list(lb.export_rows(MR))) == 19
    fake.model_runs[MR].reject_rows = {0: "bad"}
    with pytest.raises(PredictionUploadError):
        lb.upload_predictions(MR, "up", [prediction(1)])
    with pytest.raises(ModelRunNotFound):
        lb.update_status("mr-nope", "COMPLETE")
    assert any("retrying" in r.getMessage() for r in caplog.records)  # the retry was logged…
    assert all(API_KEY not in r.getMessage() for r in caplog.records)  # …without the key
    assert API_KEY not in repr(lb)


# -- goldens and wiring --------------------------------------------------------------------

def test_the_sdk_sends_the_recorded_queries(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    list(lb.export_rows(MR))
    lb.update_status(MR, "COMPLETE")
    fake.model_runs[MR].import_polls_running = 1
    lb.upload_predictions(MR, "up", [prediction(1)])
    seen = fake.queries()
    golden = {p.stem: p.read_text(encoding="utf-8") for p in GOLDEN_QUERIES.glob("*.graphql")}
    assert len(seen) == 9 and set(seen) <= set(golden)  # the rest: test_labelbox_sdk_rules.py
    for operation, query in seen.items():
        assert query == golden[operation], f"{operation}: the SDK's query text changed"


def test_from_config_builds_the_sdk_adapter(fake: FakeLabelbox) -> None:
    config = Config(labelbox_backend="sdk", labelbox_api_key=API_KEY, labelbox_endpoint=f"{fake.base_url}/graphql")
    lb = from_config(config)
    assert isinstance(lb, SdkLabelbox)
    lb.update_status(MR, "EXPORTING_DATA")
    assert fake.statuses[0]["status"] == "EXPORTING_DATA"
    with pytest.raises(ValueError, match="needs a Labelbox API key: set LABELBOX_API_KEY"):
        from_config(Config(labelbox_backend="sdk"))


# -- the stages through jobs.main --------------------------------------------------------------

def test_etl_train_evaluate_through_jobs_main_against_the_fake(fake: FakeLabelbox, tmp_path: Path) -> None:
    """text_single_classification, as the launchers run it: statuses through lbtrain.reporting
    (Deps → from_config → SdkLabelbox), each stage as `python -m jobs.main` with LABELBOX_BACKEND=sdk."""
    from lbtrain import datasets, storage
    from lbtrain.deps import Deps
    from lbtrain.reporting import report_status

    mt, mr, run_id = "text_single_classification", "mr-sdk-e2e", "r-sdk"
    datasets.build(mt, str(tmp_path / "lb"), mr, limit=60)
    export = tmp_path / "lb" / "model_runs" / mr / "export.ndjson"
    rows = [json.loads(line) for line in export.read_text(encoding="utf-8").split("\n") if line.strip()]
    fake.add_model_run(mr, rows)
    config = Config(labelbox_backend="sdk", labelbox_api_key=API_KEY, labelbox_endpoint=f"{fake.base_url}/graphql",
                    artifact_root=str(tmp_path / "artifacts"))
    deps = Deps(config)
    env = {**os.environ, "LABELBOX_BACKEND": "sdk", "LABELBOX_API_KEY": API_KEY,
           "LABELBOX_ENDPOINT": config.labelbox_endpoint, "ARTIFACT_ROOT": config.artifact_root,
           "JOB_BACKEND": "local", "LBTRAIN_MIN_EXAMPLES": "train=2,validation=1,test=1"}
    outs: dict[str, str] = {}
    for stage, status in (("etl", "PREPARING_DATA"), ("train", "TRAINING_MODEL"), ("evaluate", None)):
        if status:
            assert report_status(deps, mr, status, run_id=run_id)
        out = storage.run_dir(config.artifact_root, run_id, stage, 1)
        inputs = tmp_path / f"{stage}.json"
        inputs.write_text(json.dumps({"run_id": run_id, "model_type": mt, "model_run_id": mr, "model_id": "m",
                                      "stage": stage, "attempt": 1, "params": {}, "upstream": dict(outs)}))
        proc = subprocess.run([sys.executable, "-m", "jobs.main", "--run-id", run_id, "--stage", stage,
                               "--attempt", "1", "--inputs", str(inputs), "--outputs", out,
                               *recorded_args(stage, outs)],
                              env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert API_KEY not in proc.stdout + proc.stderr
        outs[stage] = out
    assert report_status(deps, mr, "COMPLETE", run_id=run_id, metadata={"accuracy": "0.9"})

    assert [(s["model_run_id"], s["status"]) for s in fake.statuses] == [
        (mr, "PREPARING_DATA"), (mr, "TRAINING_MODEL"), (mr, "COMPLETE")]
    assert fake.statuses[-1]["metadata"] == {"lbtrain_run_id": run_id, "accuracy": "0.9"}
    etl = json.loads(Path(outs["etl"], "outputs.json").read_text())
    evaluate = json.loads(Path(outs["evaluate"], "outputs.json").read_text())
    (upload,) = fake.uploads
    assert upload["model_run_id"] == mr and upload["name"] == evaluate["metrics"]["upload_name"]
    assert len(upload["rows"]) == evaluate["metrics"]["uploaded_rows"] > 0
    predicted = {r["dataRow"]["id"] for r in upload["rows"] if "answer" in r}
    assert predicted and predicted <= {r["data_row"]["id"] for r in rows}
    assert etl["metrics"]  # the etl stage read the rows the fake streamed
