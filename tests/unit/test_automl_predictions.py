"""Parsing real AutoML Image batch-prediction outputs (tests/data/vertex) into Labelbox rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs.automl_predictions import (
    AutoMLOutputError,
    RowInfo,
    box_rows,
    classification_rows,
    read_jsonl,
    split_display_name,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data"
VERTEX = FIXTURES / "vertex"


def load(name: str) -> list[dict]:
    return read_jsonl((VERTEX / name).read_text().splitlines())


def rows_for(records: list[dict], with_size: bool = False) -> dict[str, RowInfo]:
    """Data rows as lbtrain's import would have named them: the file stem is the data row id; the
    detection fixture's files also carry their size (`<id>_<w>_<h>.jpg`)."""
    out = {}
    for r in records:
        uri = r["instance"]["content"]
        stem = uri.rsplit("/", 1)[1].rsplit(".", 1)[0]
        m = re.match(r"(.+)_(\d+)_(\d+)$", stem)
        if with_size and m:
            out[uri] = RowInfo(m.group(1), int(m.group(2)), int(m.group(3)))
        else:
            out[uri] = RowInfo(stem)
    return out


def test_single_label_fixture():
    records = load("automl-batch-prediction-image-single.txt")
    rows, unknown = classification_rows(records, rows_for(records), ["Type of fruit"])
    assert unknown == [] and len(rows) == len(records) == 126
    first = rows[0]
    assert first == {"name": "Type of fruit", "answer": {"name": "grapes", "confidence": 0.882227},
                     "dataRow": {"id": "cl2tahcml00rs072u83h3coja"}}
    assert all(0 <= r["answer"]["confidence"] <= 1 for r in rows)
    assert {r["answer"]["name"] for r in rows} <= {"apples", "grapes", "oranges", "peaches", "plums", "strawberries"}


def test_multi_label_fixture_thresholds_answers():
    records = load("automl-batch-prediction-image-multi.txt")
    rows, _ = classification_rows(records, rows_for(records), ["description"], multi_label=True, threshold=0.5)
    assert len(rows) == 207
    first = rows[0]
    assert first["name"] == "description" and first["answer"] == [{"name": "desert", "confidence": 0.949834}]
    low, _ = classification_rows(records[:1], rows_for(records), ["description"], multi_label=True, threshold=0.05)
    assert [a["name"] for a in low[0]["answer"]] == ["desert", "sunset", "mountains"]


def test_bbox_fixture_in_pixels():
    records = load("automl-batch-prediction-bbox-test.txt")
    rows, unknown = box_rows(records, rows_for(records, with_size=True), min_confidence=0.5)
    assert unknown == [] and rows
    first = rows[0]
    # [xMin, xMax, yMin, yMax] = [0.38324276, 0.5034302, 0.5132408, 0.6970171] on 2048 x 1365
    assert first["name"] == "Grapes" and first["dataRow"]["id"] == "cl2i7mznt02qg0zvb4vulgbsl"
    assert first["bbox"] == {"top": round(0.5132408 * 1365, 2), "left": round(0.38324276 * 2048, 2),
                             "height": round((0.6970171 - 0.5132408) * 1365, 2),
                             "width": round((0.5034302 - 0.38324276) * 2048, 2)}
    assert all(r["confidence"] >= 0.5 for r in rows)
    shape = json.loads((FIXTURES / "labelbox" / "rectangle_import.json").read_text())[0]
    assert set(shape["bbox"]) == set(first["bbox"])


def test_unknown_instances_are_reported_not_dropped():
    records = load("automl-batch-prediction-image-single.txt")[:3]
    rows, unknown = classification_rows(records, {}, ["Type of fruit"])
    assert rows == [] and unknown == [r["instance"]["content"] for r in records]


def test_display_names_with_underscores():
    assert split_display_name("fruit_type_blood_orange", ["fruit_type"]) == ("fruit_type", "blood_orange")
    assert split_display_name("a_b", []) == ("a", "b")
    with pytest.raises(AutoMLOutputError):
        split_display_name("noseparator", [])


def test_malformed_output_is_a_clear_error():
    with pytest.raises(AutoMLOutputError, match="line 2"):
        read_jsonl(['{"a": 1}', "{nope"])
    with pytest.raises(AutoMLOutputError, match="missing"):
        classification_rows([{"instance": {"content": "x"}}], {"x": RowInfo("r")}, ["q"])
    with pytest.raises(AutoMLOutputError, match="image size unknown"):
        box_rows([{"instance": {"content": "x"}, "prediction": {"displayNames": ["a"], "confidences": [0.9],
                                                                 "bboxes": [[0, 1, 0, 1]]}}], {"x": RowInfo("r")})
