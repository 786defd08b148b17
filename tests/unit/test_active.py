"""jobs/active.py: uncertainty per model type, the labeling queue order, and pre-label rows in the shapes of
Labelbox's annotation-import fixtures (tests/data/labelbox/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import active

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "labelbox"
# What a prediction import carries and a pre-label (MAL) import does not.
PREDICTION_ONLY = {"confidence", "customMetrics", "schemaId", "classifications"}


def fixture_keys(name: str, index: int = 0) -> set[str]:
    return set(json.loads((FIXTURES / name).read_text())[index]) - PREDICTION_ONLY


def test_single_label_uncertainty_is_one_minus_the_top_two_margin() -> None:
    sure = {"scores": {"a": 0.9, "b": 0.08, "c": 0.02}}
    torn = {"scores": {"a": 0.45, "b": 0.44, "c": 0.11}}
    assert active.uncertainty("text_single_classification", sure) == pytest.approx(1 - 0.82)
    assert active.uncertainty("image_single_classification", torn) == pytest.approx(1 - 0.01)
    assert active.uncertainty("text_single_classification", {"scores": {}}) == 1.0


def test_multi_label_uncertainty_is_the_class_closest_to_its_threshold() -> None:
    pred = {"labels": ["a"], "scores": {"a": 0.95, "b": 0.40}}
    assert active.uncertainty("text_multi_classification", pred, 0.5) == pytest.approx(1 - 2 * 0.10)
    assert active.uncertainty("image_multi_classification", pred, {"b": 0.4, "a": 0.5}) == pytest.approx(1.0)
    assert active.uncertainty("image_multi_classification", {"scores": {"a": 0.99, "b": 0.01}}) == pytest.approx(
        1 - 2 * 0.49)


def test_detections_uncertainty_is_the_least_confident_kept_one_and_nothing_found_is_most_uncertain() -> None:
    boxes = {"boxes": [{"name": "3", "confidence": 0.9, "bbox": {}}, {"name": "7", "confidence": 0.6, "bbox": {}}]}
    assert active.uncertainty("bounding_box", boxes) == pytest.approx(0.4)
    assert active.uncertainty("ner", {"entities": [{"type": "person", "confidence": 0.8}]}) == pytest.approx(0.2)
    assert active.uncertainty("bounding_box", {"boxes": []}) == 1.0
    with pytest.raises(ValueError, match="no uncertainty measure"):
        active.uncertainty("video", {})


def test_queue_order_puts_the_most_uncertain_first_with_a_share_of_random_picks() -> None:
    scores = {f"r{i:03d}": i / 100 for i in range(100)}  # r099 the most uncertain
    assert active.queue_order(scores, 0.0) == [f"r{i:03d}" for i in range(99, -1, -1)]
    order = active.queue_order(scores, 0.2, seed="run-1")
    assert sorted(order) == sorted(scores) and len(order) == 100  # every row once
    assert order == active.queue_order(scores, 0.2, seed="run-1")  # deterministic for a seed
    assert order != active.queue_order(scores, 0.2, seed="run-2")
    # every 5th place is a random pick; the others follow uncertainty
    by_uncertainty = [r for i, r in enumerate(order) if (i + 1) % 5]
    assert by_uncertainty == sorted(by_uncertainty, key=lambda r: -scores[r])
    assert by_uncertainty[:4] == ["r099", "r098", "r097", "r096"]
    random_picks = [r for i, r in enumerate(order) if (i + 1) % 5 == 0]
    assert any(scores[r] < 0.5 for r in random_picks[:5])  # drawn from the whole range, not the top
    with pytest.raises(ValueError, match="random_share"):
        active.queue_order(scores, 1.5)


def test_priorities_follow_labelboxs_lower_first_convention() -> None:
    assert active.priorities(["b", "a", "c"]) == [("b", 1), ("a", 2), ("c", 3)]


def test_radio_prelabel_has_the_classification_import_shape_and_respects_the_threshold() -> None:
    pred = {"label": "cat", "confidence": 0.8, "scores": {"cat": 0.8, "dog": 0.2}}
    [row] = active.prelabel_annotations("image_single_classification", "run1", "dr1", pred, question="animal",
                                        min_confidence=0.7)
    assert set(row) == fixture_keys("classification_import_name_only.json", 0)
    assert row["name"] == "animal" and row["answer"] == {"name": "cat"} and row["dataRow"] == {"id": "dr1"}
    assert active.prelabel_annotations("text_single_classification", "run1", "dr1", pred, question="animal",
                                       min_confidence={"cat": 0.9}) == []
    again = active.prelabel_annotations("image_single_classification", "run1", "dr1", pred, question="animal")
    assert again[0]["uuid"] == row["uuid"]  # a retried import carries the same annotation ids
    other = active.prelabel_annotations("image_single_classification", "run2", "dr1", pred, question="animal")
    assert other[0]["uuid"] != row["uuid"]


def test_checklist_prelabel_lists_the_chosen_confident_classes() -> None:
    pred = {"labels": ["a", "b"], "scores": {"a": 0.9, "b": 0.55, "c": 0.3}}
    [row] = active.prelabel_annotations("text_multi_classification", "r", "dr2", pred, question="topics",
                                        min_confidence=0.6)
    assert set(row) == fixture_keys("classification_import_name_only.json", 1)
    assert row["answer"] == [{"name": "a"}]  # a checklist answer is a list
    assert active.prelabel_annotations("image_multi_classification", "r", "dr2", pred, question="q",
                                       min_confidence=0.95) == []


def test_box_prelabels_have_the_rectangle_import_shape() -> None:
    pred = {"boxes": [{"name": "7", "confidence": 0.9, "bbox": {"top": 1.0, "left": 2.0, "height": 3.0, "width": 4.0}},
                      {"name": "1", "confidence": 0.3, "bbox": {"top": 5.0, "left": 6.0, "height": 7.0, "width": 8.0}}]}
    rows = active.prelabel_annotations("bounding_box", "r", "dr3", pred, min_confidence=0.5)
    assert [r["name"] for r in rows] == ["7"]
    assert set(rows[0]) == fixture_keys("rectangle_import.json")
    assert rows[0]["bbox"] == {"top": 1.0, "left": 2.0, "height": 3.0, "width": 4.0}


def test_entity_prelabels_have_the_text_entity_shape_with_an_inclusive_end_in_utf16_when_asked() -> None:
    text = "😀 Ada Lovelace"
    pred = {"entities": [{"type": "person", "start": 2, "end": 13, "text": "Ada Lovelace", "confidence": 0.8}]}
    [row] = active.prelabel_annotations("ner", "r", "dr4", pred, min_confidence=0.5, text=text)
    assert set(row) == fixture_keys("text_entity_import.json")
    assert row["location"] == {"start": 2, "end": 13} and text[2:14] == "Ada Lovelace"
    [row16] = active.prelabel_annotations("ner", "r", "dr4", pred, min_confidence=0.5, text=text, utf16=True)
    assert row16["location"] == {"start": 3, "end": 14}  # the emoji is two UTF-16 code units
    assert active.prelabel_annotations("ner", "r", "dr4", pred, min_confidence={"person": 0.9}) == []
