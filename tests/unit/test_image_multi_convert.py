"""Export v2 → dataset snapshot for image_multi_classification: a checklist, or several radios as
`question/answer` targets; edge cases from the golden rows in tests/data/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.tasks.base import DatasetError, ParamError
from jobs.tasks.image_multi_classification import TASK

DATA = Path(__file__).resolve().parent.parent / "data"
MR = "mr-img"


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def golden(name: str) -> list[dict[str, Any]]:
    text = (DATA / f"export_image_{name}.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.replace("__DATA__", str(DATA / "images")).splitlines()]


def test_checklist_targets_and_skips(tmp_path: Path) -> None:
    ds = TASK.convert(golden("multi"), MR, {}, str(tmp_path), _quiet)
    got = {e["data_row_id"]: (e["split"], e["targets"]) for e in ds.examples}
    assert got == {
        "m01": ("train", ["3", "7"]),
        "m02": ("validation", ["7"]),
        "m03": ("test", ["3"]),  # the nested radio under an answer is ignored
        "m09": ("train", ["3", "7"]),  # conflicting labels: the first wins
    }
    assert ds.label_map == {"mode": "checklist", "questions": ["digits"], "classes": ["3", "7"], "question": "digits"}
    skipped = ds.stats["skipped"]
    assert {k: v["count"] for k, v in skipped.items()} == {
        "no_answer": 2,  # no annotations; only a radio of another question
        "no_split": 1,
        "no_label": 1,
        "fetch_failed": 1,
    }
    assert skipped["no_answer"]["data_row_ids"] == ["m04", "m06"]
    assert ds.stats["notes"]["conflicting_answers"]["data_row_ids"] == ["m09"]
    assert {r["data_row_id"]: r["reason"] for r in ds.predict_only} == {
        "m04": "no_answer",
        "m05": "no_split",
        "m06": "no_answer",
        "m07": "no_label",
    }
    assert ds.stats["per_class"] == {
        "3": {"train": 2, "validation": 0, "test": 1},
        "7": {"train": 2, "validation": 1, "test": 0},
    }
    assert len(ds.examples) + sum(v["count"] for v in skipped.values()) == ds.stats["rows"] == 9


def test_several_radios_become_question_answer_targets(tmp_path: Path) -> None:
    ds = TASK.convert(golden("multi_radios"), MR, {}, str(tmp_path), _quiet)
    got = {e["data_row_id"]: (e["split"], e["targets"]) for e in ds.examples}
    assert got == {
        "r01": ("train", ["color/red", "shape/round"]),
        "r02": ("train", ["color/dark", "shape/square"]),  # nested "size" radio ignored
        "r03": ("validation", ["color/red"]),
        "r04": ("test", ["color/dark", "shape/square"]),
    }
    assert ds.label_map["mode"] == "radios" and ds.label_map["questions"] == ["color", "shape"]
    assert ds.label_map["classes"] == ["color/dark", "color/red", "shape/round", "shape/square"]
    assert [r["reason"] for r in ds.predict_only] == ["unassigned_split"]
    only_color = TASK.convert(golden("multi_radios"), MR, {"questions": ["color"]}, str(tmp_path), _quiet)
    assert only_color.label_map["classes"] == ["color/dark", "color/red"]


def test_validation_counts_examples_containing_each_class(tmp_path: Path) -> None:
    ds = TASK.convert(golden("multi"), MR, {}, str(tmp_path), _quiet)
    with pytest.raises(DatasetError) as err:
        TASK.validate(ds, {"train": 1, "validation": 1, "test": 1})
    assert str(err.value) == (
        'too few examples: class "3" has 0 in split "validation" (minimum 1); '
        "1 more class/split pair is also too small"
    )
    TASK.validate(ds, {"train": 2, "validation": 0, "test": 0})


def test_validation_needs_two_classes(tmp_path: Path) -> None:
    rows = [r for r in golden("multi") if r["data_row"]["id"] in ("m02", "m05")]
    ds = TASK.convert(rows, MR, {}, str(tmp_path), _quiet)
    with pytest.raises(DatasetError, match=r'need at least 2 classes to train, found 1 \("7"\)'):
        TASK.validate(ds, {"train": 0, "validation": 0, "test": 0})


def test_nothing_to_learn_or_bad_params(tmp_path: Path) -> None:
    rows = [{"data_row": {"id": "x", "row_data": "/a.png"}, "experiments": {"m": {"runs": {MR: {"labels": []}}}}}]
    with pytest.raises(DatasetError, match="no checklist or radio classification"):
        TASK.convert(rows, MR, {}, str(tmp_path), _quiet)
    with pytest.raises(ParamError, match="param questions"):
        TASK.convert(golden("multi_radios"), MR, {"questions": "color"}, str(tmp_path), _quiet)
