"""Export v2 → dataset snapshot for image_single_classification, against golden rows with edge cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.tasks.base import DatasetError, read_dataset, write_dataset
from jobs.tasks.image_single_classification import TASK

DATA = Path(__file__).resolve().parent.parent / "data"
MR = "mr-img"


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def golden(name: str) -> list[dict[str, Any]]:
    """Golden rows with their media pointing into tests/data/images."""
    import json

    text = (DATA / f"export_image_{name}.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.replace("__DATA__", str(DATA / "images")).splitlines()]


@pytest.fixture()
def converted(tmp_path: Path):
    return TASK.convert(golden("single"), MR, {}, str(tmp_path / "etl"), _quiet)


def test_examples_splits_targets_and_media(converted, tmp_path: Path) -> None:
    got = {e["data_row_id"]: (e["split"], e["target"]) for e in converted.examples}
    assert got == {
        "i01": ("train", "red"),
        "i02": ("train", "dark"),  # "TRAINING", plain local path
        "i03": ("test", "red"),  # "Test"
        "i04": ("validation", "dark"),
        "i12": ("validation", "red"),  # nested "color: dark" under the answer is ignored
        "i13": ("test", "dark"),  # conflicting labels: the first wins
        "i16": ("validation", "dark"),  # run found under another model id
    }
    assert converted.label_map == {"question": "color", "classes": ["dark", "red"]}
    by_id = {e["data_row_id"]: e for e in converted.examples}
    assert by_id["i01"]["image"] == str(tmp_path / "etl" / "media" / "i01.png")
    assert Path(by_id["i01"]["image"]).read_bytes() == (DATA / "images" / "red_8x6.png").read_bytes()
    assert (by_id["i02"]["width"], by_id["i02"]["height"]) == (10, 10)  # from the image itself
    assert (by_id["i16"]["width"], by_id["i16"]["height"]) == (200, 100)  # from media_attributes
    assert by_id["i01"]["global_key"] == "gk-i01" and "global_key" not in by_id["i04"]


def test_nothing_is_dropped_silently(converted) -> None:
    skipped = converted.stats["skipped"]
    assert {k: v["count"] for k, v in skipped.items()} == {
        "no_split": 1,
        "unassigned_split": 1,
        "no_answer": 2,  # a label with no annotations; a label with only a checklist
        "no_label": 1,
        "fetch_failed": 1,
        "not_in_model_run": 1,
        "duplicate_data_row": 1,
        "no_media": 1,
    }
    assert skipped["no_answer"]["data_row_ids"] == ["i07", "i15"]
    assert skipped["fetch_failed"]["data_row_ids"] == ["i09"]
    assert skipped["no_media"]["data_row_ids"] == ["i14"]
    assert converted.stats["media"]["failed"] == 1 and "i09" in converted.stats["media"]["failures"]
    assert converted.stats["notes"]["conflicting_answers"]["data_row_ids"] == ["i13"]
    assert len(converted.examples) + sum(v["count"] for v in skipped.values()) == converted.stats["rows"] == 16


def test_predict_only_rows_keep_media_and_reason(converted) -> None:
    got = {r["data_row_id"]: (r["split"], r["target"], r["reason"]) for r in converted.predict_only}
    assert got == {
        "i05": ("unassigned", "red", "no_split"),
        "i06": ("unassigned", "dark", "unassigned_split"),
        "i07": ("train", None, "no_answer"),
        "i08": ("test", None, "no_label"),
        "i15": ("train", None, "no_answer"),
    }
    assert all(Path(r["image"]).exists() for r in converted.predict_only)


def test_snapshot_round_trip(tmp_path: Path, converted) -> None:
    write_dataset(str(tmp_path / "snap"), converted)
    back = read_dataset(str(tmp_path / "snap"))
    assert back.examples == converted.examples and back.predict_only == converted.predict_only
    assert TASK.etl_summary(back)["fetch_failed"] == 1


def test_validation_names_class_and_split(converted) -> None:
    with pytest.raises(DatasetError) as err:
        TASK.validate(converted, {"train": 1, "validation": 1, "test": 2})
    assert str(err.value) == (
        'too few examples: class "dark" has 1 in split "test" (minimum 2); '
        "1 more class/split pair is also too small"
    )
    TASK.validate(converted, {"train": 1, "validation": 1, "test": 1})


def test_no_split_anywhere_says_why(tmp_path: Path) -> None:
    rows = [r for r in golden("single") if r["data_row"]["id"] in ("i05", "i06")]
    ds = TASK.convert(rows, MR, {}, str(tmp_path), _quiet)
    with pytest.raises(DatasetError, match=r"no labeled examples .* \(rows skipped: 1 no_split, 1 unassigned_split\)"):
        TASK.validate(ds, {"train": 1})
    assert len(ds.predict_only) == 2


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "has no data rows"),
        ([{"data_row": {"id": "x", "row_data": "/a.png"}, "experiments": {}}], "belongs to model run"),
        (
            [{"data_row": {"id": "x", "row_data": "/a.png"}, "experiments": {"m": {"runs": {MR: {"labels": []}}}}}],
            "no radio classification",
        ),
    ],
)
def test_unusable_exports_fail_clearly(rows: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        TASK.convert(rows, MR, {}, "/unused", _quiet)
