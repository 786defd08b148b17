"""The file-backed Labelbox adapter (docs/architecture.md §9, lbtrain/adapters/labelbox.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lbtrain.adapters.labelbox import (
    MAX_ERROR_MESSAGE,
    STATUSES,
    FileLabelbox,
    ModelRunNotFound,
    clip_error,
    from_config,
)
from lbtrain.config import Config

MR = "clq8f1k2m00ab07l2d3e4f5g6"


@pytest.fixture()
def lb(tmp_path: Path) -> FileLabelbox:
    (tmp_path / "model_runs" / MR).mkdir(parents=True)
    return FileLabelbox(tmp_path)


def _status_lines(lb: FileLabelbox) -> list[dict]:
    path = lb.root / "model_runs" / MR / "status.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- statuses -------------------------------------------------------------------------------

def test_statuses_are_appended_in_order(lb: FileLabelbox) -> None:
    for status in ("EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL", "COMPLETE"):
        lb.update_status(MR, status, metadata={"lbtrain_run_id": "r1"})
    lines = _status_lines(lb)
    assert [e["status"] for e in lines] == ["EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL", "COMPLETE"]
    assert lb.statuses(MR) == lines
    for e in lines:
        assert set(e) == {"status", "metadata", "error_message", "at"}
        assert e["metadata"] == {"lbtrain_run_id": "r1"} and e["error_message"] is None
        assert e["at"].endswith("Z")


def test_statuses_of_a_model_run_without_reports_is_empty(lb: FileLabelbox) -> None:
    assert lb.statuses(MR) == []


def test_consecutive_duplicate_is_not_appended(lb: FileLabelbox) -> None:
    lb.update_status(MR, "TRAINING_MODEL", metadata={"lbtrain_run_id": "r1"})
    lb.update_status(MR, "TRAINING_MODEL", metadata={"lbtrain_run_id": "r1"})
    assert [e["status"] for e in lb.statuses(MR)] == ["TRAINING_MODEL"]


def test_same_status_with_different_metadata_or_error_is_appended(lb: FileLabelbox) -> None:
    lb.update_status(MR, "FAILED", error_message="a")
    lb.update_status(MR, "FAILED", error_message="b")
    lb.update_status(MR, "FAILED", error_message="b", metadata={"k": "v"})
    assert [e["error_message"] for e in lb.statuses(MR)] == ["a", "b", "b"]


def test_non_consecutive_repeat_is_appended(lb: FileLabelbox) -> None:
    for status in ("TRAINING_MODEL", "FAILED", "TRAINING_MODEL"):
        lb.update_status(MR, status)
    assert [e["status"] for e in lb.statuses(MR)] == ["TRAINING_MODEL", "FAILED", "TRAINING_MODEL"]


def test_metadata_values_are_strings(lb: FileLabelbox) -> None:
    lb.update_status(MR, "COMPLETE", metadata={"macro_f1": 0.5, "n": 3})  # type: ignore[dict-item]
    assert lb.statuses(MR)[0]["metadata"] == {"macro_f1": "0.5", "n": "3"}


@pytest.mark.parametrize("length", [254, 255, 256, 1000, 10_000])
def test_error_message_is_clipped_to_255_chars(lb: FileLabelbox, length: int) -> None:
    message = "x" * length
    lb.update_status(MR, "FAILED", error_message=message)
    stored = lb.statuses(MR)[-1]["error_message"]
    assert len(stored) <= MAX_ERROR_MESSAGE == 255
    if length <= 255:
        assert stored == message
    else:
        assert stored.startswith("x" * 200) and stored.endswith("…")


def test_clip_error_collapses_whitespace_and_keeps_short_messages() -> None:
    assert clip_error("etl:\n  class 'cat'\thas 0 examples") == "etl: class 'cat' has 0 examples"
    assert clip_error("short") == "short"
    assert len(clip_error("y " * 500)) == 255


@pytest.mark.parametrize("status", ["DONE", "complete", "", "TRAINING"])
def test_unknown_status_is_refused_and_nothing_written(lb: FileLabelbox, status: str) -> None:
    with pytest.raises(ValueError, match="status"):
        lb.update_status(MR, status)
    assert lb.statuses(MR) == []


def test_known_statuses_are_labelboxs() -> None:
    assert set(STATUSES) == {"EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL", "COMPLETE", "FAILED"}


def test_update_status_of_missing_model_run(tmp_path: Path) -> None:
    lb = FileLabelbox(tmp_path)
    with pytest.raises(ModelRunNotFound) as info:
        lb.update_status("nope", "EXPORTING_DATA")
    assert "nope" in str(info.value)
    assert not (tmp_path / "model_runs" / "nope").exists()


# -- export ---------------------------------------------------------------------------------

def test_export_rows_reads_ndjson_and_skips_blank_lines(lb: FileLabelbox) -> None:
    rows = [{"data_row": {"id": "dr1", "row_data": "hello"}}, {"data_row": {"id": "dr2", "row_data": "bye"}}]
    (lb.root / "model_runs" / MR / "export.ndjson").write_text(
        json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    assert list(lb.export_rows(MR)) == rows


def test_export_rows_bad_line_names_the_line(lb: FileLabelbox) -> None:
    (lb.root / "model_runs" / MR / "export.ndjson").write_text('{"a": 1}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=":2:"):
        list(lb.export_rows(MR))


def test_export_of_missing_model_run_or_missing_export(lb: FileLabelbox) -> None:
    with pytest.raises(ModelRunNotFound):
        list(lb.export_rows("other"))
    with pytest.raises(ModelRunNotFound):  # dir exists, export.ndjson does not
        list(lb.export_rows(MR))


# -- predictions ------------------------------------------------------------------------------

def test_predictions_file_is_written(lb: FileLabelbox) -> None:
    rows = [
        {"name": "animal", "answer": {"name": "cat", "confidence": 0.87}, "dataRow": {"id": "dr1"}},
        {"dataRow": {"id": "dr1"}, "metricValue": 0.91, "metricName": "accuracy", "aggregation": "ARITHMETIC_MEAN"},
    ]
    lb.upload_predictions(MR, "lbtrain-r1-a1", rows)
    path = lb.root / "model_runs" / MR / "predictions" / "lbtrain-r1-a1.ndjson"
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_predictions_upload_replaces_same_name(lb: FileLabelbox) -> None:
    lb.upload_predictions(MR, "p", [{"a": 1}, {"a": 2}])
    lb.upload_predictions(MR, "p", [{"a": 3}])
    path = lb.root / "model_runs" / MR / "predictions" / "p.ndjson"
    assert path.read_text(encoding="utf-8").splitlines() == ['{"a": 3}']


def test_predictions_for_missing_model_run(tmp_path: Path) -> None:
    with pytest.raises(ModelRunNotFound):
        FileLabelbox(tmp_path).upload_predictions("missing", "p", [])


# -- unsafe ids -------------------------------------------------------------------------------

# "." and ".." pass the character check yet resolve to model_runs/ itself and to its parent.
UNSAFE_IDS = ["../x", "a/b", "/etc", "..\\x", "", "x" * 201, "a b", "..", "."]


@pytest.mark.parametrize("bad", UNSAFE_IDS)
def test_unsafe_model_run_ids_are_refused(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "lb"
    (root / "model_runs").mkdir(parents=True)
    (root / "export.ndjson").write_text('{"leak": true}\n', encoding="utf-8")  # outside model_runs/
    lb = FileLabelbox(root)
    with pytest.raises(ValueError):
        lb.update_status(bad, "EXPORTING_DATA")
    with pytest.raises(ValueError):
        list(lb.export_rows(bad))
    with pytest.raises(ValueError):
        lb.upload_predictions(bad, "p", [{"a": 1}])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "lb", "lb/export.ndjson", "lb/model_runs"]


@pytest.mark.parametrize("bad", ["../p", "a/b", "", "/abs", "x" * 201])
def test_unsafe_prediction_names_are_refused(lb: FileLabelbox, bad: str) -> None:
    with pytest.raises(ValueError):
        lb.upload_predictions(MR, bad, [{"a": 1}])


def test_from_config(tmp_path: Path) -> None:
    lb = from_config(Config(labelbox_backend="file", labelbox_dir=str(tmp_path)))
    assert isinstance(lb, FileLabelbox) and lb.root == tmp_path
    with pytest.raises(ValueError, match="LABELBOX_BACKEND"):
        from_config(Config(labelbox_backend="sdk"))
