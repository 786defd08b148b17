"""bounding_box ETL against golden Export v2 rows (tests/data/export_bounding_box.ndjson): clipping,
degenerate boxes, splits, labels without annotations, nested classifications, media problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.tasks import bounding_box
from jobs.tasks.base import Dataset, DatasetError, ParamError

DATA = Path(__file__).resolve().parent.parent / "data"
MR = "mr-bbox"


def golden_rows() -> list[dict[str, Any]]:
    text = (DATA / "export_bounding_box.ndjson").read_text().replace("__DATA__", str(DATA))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("etl")
    return bounding_box.TASK.convert(golden_rows(), MR, {}, str(out), lambda *a, **k: None)


def by_id(dataset: Dataset) -> dict[str, dict[str, Any]]:
    return {r["data_row_id"]: r for r in dataset.all_rows()}


def test_examples_and_splits(dataset: Dataset) -> None:
    assert [(e["data_row_id"], e["split"]) for e in dataset.examples] == [
        ("drb01", "train"),
        ("drb02", "validation"),
        ("drb03", "test"),
        ("drb10", "test"),
    ]
    assert dataset.label_map == {"classes": ["cat", "dog"], "kind": "bounding_box"}
    assert dataset.stats["per_class"] == {
        "cat": {"train": 1, "validation": 0, "test": 1},
        "dog": {"train": 1, "validation": 1, "test": 0},
    }


def test_box_partly_outside_is_clipped(dataset: Dataset) -> None:
    rows = by_id(dataset)
    assert rows["drb01"]["boxes"] == [
        {"name": "cat", "top": 10.0, "left": 8.0, "height": 20.0, "width": 20.0},  # nested radio ignored
        {"name": "dog", "top": 40.0, "left": 0.0, "height": 8.0, "width": 15.0},  # was left=-5, bottom=60 > 48
    ]
    assert dataset.stats["notes"]["clipped_boxes"] == {"count": 1, "data_row_ids": ["drb01"]}


def test_degenerate_boxes_are_counted(dataset: Dataset) -> None:
    rows = by_id(dataset)
    assert [b["name"] for b in rows["drb02"]["boxes"]] == ["dog"]  # the cat box lies right of the image
    assert [b["name"] for b in rows["drb10"]["boxes"]] == ["cat"]  # the dog box has zero width
    assert dataset.stats["notes"]["degenerate_boxes"] == {"count": 2, "data_row_ids": ["drb02", "drb10"]}
    assert bounding_box.TASK.etl_summary(dataset)["degenerate_boxes"] == 2


def test_label_without_annotations_is_an_empty_image(dataset: Dataset) -> None:
    assert by_id(dataset)["drb03"]["boxes"] == [] and by_id(dataset)["drb03"]["split"] == "test"
    assert dataset.stats["images_without_boxes"] == {"train": 0, "validation": 0, "test": 1}


def test_rows_not_trained_on_are_counted_and_named(dataset: Dataset) -> None:
    skipped = dataset.stats["skipped"]
    assert {k: v["data_row_ids"] for k, v in skipped.items()} == {
        "fetch_failed": ["drb09"],
        "no_boxes": ["drb07"],  # only a polygon: not background
        "no_label": ["drb06"],
        "no_split": ["drb04"],
        "not_in_model_run": ["drb08"],
        "unassigned_split": ["drb05"],
    }
    assert [(r["data_row_id"], r["reason"]) for r in dataset.predict_only] == [
        ("drb04", "no_split"),
        ("drb05", "unassigned_split"),
        ("drb06", "no_label"),
        ("drb07", "no_boxes"),
    ]
    cat = {"name": "cat", "top": 10.0, "left": 8.0, "height": 20.0, "width": 20.0}
    assert dataset.predict_only[0]["boxes"] == [cat]
    assert dataset.stats["notes"]["multiple_labels"]["data_row_ids"] == ["drb10"]
    assert dataset.stats["media"]["failed"] == 1 and "drb09" in dataset.stats["media"]["failures"]
    assert dataset.stats["rows"] == 10


def test_media_copied_and_size_from_header(dataset: Dataset) -> None:
    rows = by_id(dataset)
    assert (rows["drb10"]["width"], rows["drb10"]["height"]) == (32, 32)  # no media_attributes
    assert (rows["drb01"]["width"], rows["drb01"]["height"]) == (64, 48)
    for r in dataset.all_rows():
        assert Path(r["image"]).exists() and "/media/" in r["image"]


def test_validation_names_class_and_split(dataset: Dataset) -> None:
    with pytest.raises(DatasetError) as err:
        bounding_box.TASK.validate(dataset, {"train": 1, "validation": 1, "test": 1})
    assert str(err.value) == (
        'too few boxes: class "cat" has 0 in split "validation" (minimum 1); 1 more class/split pair is also too small'
    )
    bounding_box.TASK.validate(dataset, {"train": 1, "validation": 0, "test": 0})


def test_validation_without_boxes_or_examples() -> None:
    empty = Dataset(examples=[], label_map={"classes": []}, stats={"skipped": {"no_label": {"count": 3}}})
    with pytest.raises(DatasetError, match=r"no labeled images .*3 no_label"):
        bounding_box.TASK.validate(empty, {})
    no_boxes = Dataset(examples=[{"split": "train", "boxes": []}], label_map={"classes": []})
    with pytest.raises(DatasetError, match="no rectangles"):
        bounding_box.TASK.validate(no_boxes, {})


def test_convert_refuses_a_foreign_model_run(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="belongs to model run 'nope'"):
        bounding_box.TASK.convert(golden_rows(), "nope", {}, str(tmp_path), lambda *a, **k: None)


def test_clip_box() -> None:
    assert bounding_box.clip_box({"top": -2, "left": 1, "height": 4, "width": 200}, 10, 10) == (
        {"top": 0.0, "left": 1.0, "height": 2.0, "width": 9.0},
        True,
    )
    assert bounding_box.clip_box({"top": 1, "left": 1, "height": 2, "width": 2}, 10, 10)[1] is False
    assert bounding_box.clip_box({"top": 1, "left": 1, "height": -2, "width": 2}, 10, 10) == (None, False)
    assert bounding_box.clip_box({"top": "x"}, 10, 10) == (None, False)


def test_params_are_checked() -> None:
    assert bounding_box.train_params({})["epochs"] == 20
    for bad in ({"epochs": 0}, {"lr": "fast"}, {"input_size": 100}, {"augment": "yes"}, {"score_threshold": 2}):
        with pytest.raises(ParamError):
            bounding_box.train_params(bad)


def test_learning_rate_schedule_follows_the_time_budget() -> None:
    assert bounding_box.lr_at(1.0, 0.0, 0.0) == pytest.approx(0.1)  # warm-up start
    assert bounding_box.lr_at(1.0, 0.05, 0.0) == pytest.approx(1.0)  # peak
    assert bounding_box.lr_at(1.0, 1.0, 0.0) == pytest.approx(0.02)  # annealed at the last step
    assert bounding_box.lr_at(1.0, 0.2, 1.0) == pytest.approx(0.02)  # a slow machine anneals by the deadline
