"""Export v2 → dataset snapshot for ner against golden rows (entity at the very end, non-ASCII,
UTF-16 offsets, misaligned/overlapping/invalid spans, labels without annotations, nested
classifications), offset-keeping tokenization, BIO tagging/decoding and validation messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.tasks.base import Dataset, DatasetError
from jobs.tasks.ner import TASK, bio_tags, cp_to_utf16, decode, tokenize, utf16_to_cp
from lbtrain.adapters.labelbox import FileLabelbox

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "export_ner.ndjson"
MR = "mr-golden"


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


@pytest.fixture()
def converted(tmp_path: Path) -> Dataset:
    run_dir = tmp_path / "model_runs" / MR
    run_dir.mkdir(parents=True)
    (run_dir / "export.ndjson").write_text(GOLDEN.read_text(encoding="utf-8"), encoding="utf-8")
    rows = list(FileLabelbox(tmp_path).export_rows(MR))
    return TASK.convert(rows, MR, {}, str(tmp_path / "out"), _quiet)


def _spans(ds: Dataset) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    return {
        e["data_row_id"]: (e["split"], [(x["type"], e["text"][x["start"] : x["end"] + 1]) for x in e["entities"]])
        for e in ds.examples
    }


def test_entities_splits_and_exact_text(converted: Dataset) -> None:
    assert _spans(converted) == {
        "n01": ("train", [("person", "Barack Obama"), ("geo-loc", "Paris")]),  # entity ends the text
        "n02": ("test", [("geo-loc", "Zürich"), ("person", "Renée")]),  # non-ASCII, after an emoji
        "n03": ("validation", [("sportsteam", "Lakers")]),  # UTF-16 offsets converted
        "n04": ("train", [("geo-loc", "Paris")]),
        "n05": ("train", [("person", "Obam")]),  # misaligned, kept as labeled
        "n06": ("train", [("geo-loc", "New York City")]),  # the overlapping "York" dropped
        "n07": ("test", []),  # a label without annotations: a tweet with no entity
        "n10": ("train", [("company", "Apple"), ("product", "iPhone")]),
        "n11": ("train", []),  # its only span ends past the text
        "n12": ("test", [("other", "Token")]),  # offsets trusted over a mismatching token
        "n13": ("train", []),  # a bounding box is not a text entity
    }
    n01 = next(e for e in converted.examples if e["data_row_id"] == "n01")
    assert n01["entities"][1] == {"type": "geo-loc", "start": 21, "end": 25} and len(n01["text"]) == 26
    assert converted.label_map["offsets"] == "codepoint"
    assert converted.label_map["entity_types"] == ["company", "geo-loc", "other", "person", "product", "sportsteam"]


def test_nothing_is_dropped_silently(converted: Dataset) -> None:
    st = converted.stats
    assert {k: v["data_row_ids"] for k, v in st["skipped"].items()} == {"no_label": ["n08"], "no_split": ["n09"]}
    assert {r["data_row_id"]: r["reason"] for r in converted.predict_only} == {"n08": "no_label", "n09": "no_split"}
    assert {k: v["data_row_ids"] for k, v in st["notes"].items()} == {
        "invalid_span": ["n11"],
        "misaligned_span": ["n05"],
        "no_entities": ["n07", "n11", "n13"],
        "not_a_text_entity": ["n13"],
        "overlapping_span": ["n06"],
        "token_mismatch": ["n12"],
    }
    assert st["misaligned_spans"] == 1 and st["entities"] == 11
    assert TASK.etl_summary(converted)["predict_only"] == 2


def test_tokenize_keeps_offsets() -> None:
    text = 'Love Paris! (Wow) @bob: http://t.co/x. :) U.S. "quoted" wow!!! Zürich 🎉'
    spans = tokenize(text)
    words = [text[s:e] for s, e in spans]
    assert words == ["Love", "Paris", "!", "(", "Wow", ")", "@bob", ":", "http://t.co/x.", ":)", "U.S", ".",
                     '"', "quoted", '"', "wow", "!!!", "Zürich", "🎉"]
    assert all(text[s:e] and not text[s:e].isspace() for s, e in spans)


def test_bio_round_trip_with_inclusive_end() -> None:
    text = "Barack Obama visited New York!"
    spans = tokenize(text)
    gold = [("person", 0, 11), ("geo-loc", 21, 28)]
    tags, misaligned = bio_tags(spans, gold)
    assert tags == ["B-person", "I-person", "O", "B-geo-loc", "I-geo-loc", "O"] and misaligned == 0
    assert [(t, s, e) for t, s, e, _ in decode(spans, tags)] == gold
    assert text[21 : 28 + 1] == "New York"
    assert bio_tags(spans, [("person", 0, 3)]) == (["B-person", "O", "O", "O", "O", "O"], 1)
    # a stray I- starts an entity; a type change splits
    assert [x[:3] for x in decode(spans, ["I-person", "I-geo-loc", "O", "O", "O", "B-x"])] == [
        ("person", 0, 5), ("geo-loc", 7, 11), ("x", 29, 29),
    ]


def test_utf16_offsets() -> None:
    text = "🎉🎉 Go Lakers"
    assert utf16_to_cp(text, 8) == 6 and cp_to_utf16(text, 6) == 8
    assert utf16_to_cp("abc", 2) == cp_to_utf16("abc", 2) == 2


def _ds(per_type: dict[str, dict[str, int]]) -> Dataset:
    examples = []
    for etype, per_split in per_type.items():
        for split, n in per_split.items():
            examples += [{"data_row_id": f"{etype}{split}{i}", "split": split, "text": "Foo bar",
                          "entities": [{"type": etype, "start": 0, "end": 2}]} for i in range(n)]
    return Dataset(examples=examples, label_map={"entity_types": sorted(per_type)}, stats={"model_run_id": "mr"})


def test_validation_names_entity_type_and_split() -> None:
    ds = _ds({"person": {"train": 5, "validation": 1, "test": 1}, "company": {"train": 5, "validation": 0, "test": 1}})
    with pytest.raises(DatasetError) as err:
        TASK.validate(ds, {"train": 5, "validation": 1, "test": 1})
    assert str(err.value) == 'too few entities: entity type "company" has 0 in split "validation" (minimum 1)'
    TASK.validate(ds, {"train": 5, "validation": 0, "test": 1})
    empty = Dataset(examples=[], label_map={"entity_types": []}, stats={"model_run_id": "mr", "skipped": {}})
    with pytest.raises(DatasetError, match="no labeled examples"):
        TASK.validate(empty, {})
    empty.examples = [{"data_row_id": "x", "split": "train", "text": "x", "entities": []}]
    with pytest.raises(DatasetError, match="no entity is labeled"):
        TASK.validate(empty, {})
