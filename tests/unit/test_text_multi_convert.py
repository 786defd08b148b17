"""Export v2 → dataset snapshot for text_multi_classification, against golden rows with edge cases:
checklists, several radios as `question/answer` targets, missing/unassigned splits, labels without
annotations, nested classifications, non-ASCII text — and validation messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.tasks.base import Dataset, DatasetError, ParamError
from jobs.tasks.text_multi_classification import TASK
from lbtrain.adapters.labelbox import FileLabelbox

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "export_text_multi.ndjson"


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def golden_rows(tmp_path: Path, mr: str) -> list[dict[str, Any]]:
    run_dir = tmp_path / "labelbox" / "model_runs" / mr
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "export.ndjson").write_text(GOLDEN.read_text(encoding="utf-8"), encoding="utf-8")
    return list(FileLabelbox(tmp_path / "labelbox").export_rows(mr))


def convert(tmp_path: Path, mr: str = "mr-golden", params: dict[str, Any] | None = None) -> Dataset:
    return TASK.convert(golden_rows(tmp_path, mr), mr, params or {}, str(tmp_path / "out"), _quiet)


def test_checklist_targets_and_splits(tmp_path: Path) -> None:
    ds = convert(tmp_path)
    got = {e["data_row_id"]: (e["split"], e["targets"]) for e in ds.examples}
    assert got == {
        "t01": ("train", ["food", "sports"]),
        "t02": ("train", ["sports"]),  # "TRAINING"
        "t03": ("validation", []),  # a label with no annotations: no class applies
        "t04": ("test", ["finance", "food"]),  # nested radio under an answer ignored
        "t08": ("test", ["sports"]),
        "t10": ("train", ["food", "sports"]),  # the radio beside the checklist is ignored
        "t13": ("validation", ["finance"]),  # conflicting labels: the first wins
    }
    assert ds.label_map == {
        "mode": "checklist",
        "question": "topics",
        "questions": ["topics"],
        "classes": ["finance", "food", "sports"],
    }
    by_id = {e["data_row_id"]: e for e in ds.examples}
    assert by_id["t08"]["text"] == "Ça a été un match magnifique — 素晴らしい 🎉"
    assert by_id["t01"]["global_key"] == "gk-t01"


def test_nothing_is_dropped_silently(tmp_path: Path) -> None:
    ds = convert(tmp_path)
    skipped = {k: v["data_row_ids"] for k, v in ds.stats["skipped"].items()}
    assert skipped == {
        "no_split": ["t05"],
        "unassigned_split": ["t06"],
        "no_label": ["t07"],
        "not_in_model_run": ["t09", "r01", "r02", "r03", "r04"],
        "duplicate_data_row": ["t01"],
        "no_text": ["t12"],
    }
    assert ds.stats["notes"]["no_answer_as_empty_set"]["data_row_ids"] == ["t03"]
    assert ds.stats["notes"]["conflicting_labels"]["data_row_ids"] == ["t13"]
    # rows in the run with text but no usable split/label are still predicted
    assert {r["data_row_id"]: r["reason"] for r in ds.predict_only} == {
        "t05": "no_split",
        "t06": "unassigned_split",
        "t07": "no_label",
    }
    assert ds.stats["per_class"]["food"] == {"train": 2, "validation": 0, "test": 1}
    assert ds.stats["empty_target_examples"] == 1
    assert TASK.etl_summary(ds)["skipped"] == 10


def test_unanswered_can_be_skipped(tmp_path: Path) -> None:
    ds = convert(tmp_path, params={"unanswered": "skip"})
    assert "t03" not in {e["data_row_id"] for e in ds.examples}
    assert ds.stats["skipped"]["no_answer"]["data_row_ids"] == ["t03"]
    with pytest.raises(ParamError, match="param unanswered"):
        convert(tmp_path / "x", params={"unanswered": "maybe"})


def test_several_radios_become_question_answer_targets(tmp_path: Path) -> None:
    ds = convert(tmp_path, "mr-radios")
    assert ds.label_map["mode"] == "radios" and ds.label_map["questions"] == ["mood", "topic"]
    got = {e["data_row_id"]: (e["split"], e["targets"]) for e in ds.examples}
    assert got == {
        "r01": ("train", ["mood/happy", "topic/sports"]),  # nested radio under "sports" ignored
        "r02": ("validation", ["mood/sad", "topic/finance"]),
        "r03": ("test", ["topic/food"]),
    }
    assert ds.label_map["classes"] == ["mood/happy", "mood/sad", "topic/finance", "topic/food", "topic/sports"]
    assert [r["data_row_id"] for r in ds.predict_only] == ["r04"]


def test_no_checklist_or_radio_is_named() -> None:
    row = {
        "data_row": {"id": "x", "row_data": "hi"},
        "experiments": {"m": {"runs": {"mr": {"split": "training", "labels": [{"annotations": {"objects": []}}]}}}},
    }
    with pytest.raises(DatasetError, match="needs a checklist"):
        TASK.convert([row], "mr", {}, "", _quiet)
    with pytest.raises(DatasetError, match="none of the 1 exported data rows"):
        TASK.convert([row], "mr-other", {}, "", _quiet)


# --- validation ----------------------------------------------------------------------------------


def _ds(counts: dict[str, dict[str, int]]) -> Dataset:
    examples = []
    for cls, per_split in counts.items():
        for split, n in per_split.items():
            examples += [{"data_row_id": f"{cls}{split}{i}", "split": split, "text": "x", "targets": [cls]}
                         for i in range(n)]
    return Dataset(examples=examples, label_map={"classes": sorted(counts)}, stats={"model_run_id": "mr"})


def test_validation_names_class_and_split() -> None:
    ds = _ds({"a": {"train": 5, "validation": 1, "test": 1}, "b": {"train": 5, "validation": 1, "test": 0}})
    with pytest.raises(DatasetError) as err:
        TASK.validate(ds, {"train": 5, "validation": 1, "test": 1})
    assert str(err.value) == 'too few examples: class "b" has 0 in split "test" (minimum 1)'
    with pytest.raises(DatasetError, match=r'class "a" has 5 in split "train" \(minimum 6\); 2 more class/split'):
        TASK.validate(ds, {"train": 6, "validation": 1, "test": 1})


def test_validation_counts_examples_containing_each_class() -> None:
    ds = _ds({"a": {"train": 5, "validation": 1, "test": 1}})
    ds.examples.append({"data_row_id": "ab", "split": "train", "text": "x", "targets": ["a", "b"]})
    ds.label_map["classes"] = ["a", "b"]
    with pytest.raises(DatasetError, match=r'class "b" has 1 in split "train" \(minimum 2\); 2 more'):
        TASK.validate(ds, {"train": 2, "validation": 1, "test": 1})
    ds.examples += [
        {"data_row_id": f"b{s}", "split": s, "text": "x", "targets": ["b"]} for s in ("train", "validation", "test")
    ]
    TASK.validate(ds, {"train": 2, "validation": 1, "test": 1})


def test_validation_without_examples_or_classes() -> None:
    ds = Dataset(examples=[], label_map={"classes": []}, stats={"model_run_id": "mr", "skipped": {}})
    with pytest.raises(DatasetError, match="no labeled examples"):
        TASK.validate(ds, {})
    ds.examples = [{"data_row_id": "x", "split": "train", "text": "x", "targets": []}]
    with pytest.raises(DatasetError, match="no class is ever answered"):
        TASK.validate(ds, {})
