"""Box metrics on hand-computed cases: the numbers evaluate reports for bounding_box rest on these."""

from __future__ import annotations

import pytest

from jobs.tasks import box_metrics as bm

A = (0.0, 0.0, 10.0, 10.0)
B = (20.0, 20.0, 30.0, 40.0)


def g(name: str, box: tuple[float, ...]) -> dict:
    return {"name": name, "box": box}


def p(name: str, box: tuple[float, ...], score: float) -> dict:
    return {"name": name, "box": box, "score": score}


def test_iou() -> None:
    assert bm.iou(A, A) == 1.0
    assert bm.iou(A, B) == 0.0
    assert bm.iou(A, (5.0, 0.0, 15.0, 10.0)) == pytest.approx(50 / 150)
    assert bm.iou(A, (0.0, 0.0, 0.0, 10.0)) == 0.0  # degenerate box: no area, no division by zero
    assert bm.iou_matrix([A, B], [B]).tolist() == [[0.0], [1.0]]


def test_perfect_detections() -> None:
    m = bm.detection_metrics([([g("a", A), g("b", B)], [p("a", A, 0.9), p("b", B, 0.8)])], ["a", "b"])
    assert m["map50"] == 1.0
    assert m["per_class"]["a"] == {"ap50": 1.0, "gt": 1, "detections": 1, "tp": 1, "fp": 0, "fn": 0}


def test_missed_box_halves_ap() -> None:
    images = [([g("a", A)], [p("a", A, 0.9)]), ([g("a", B)], [])]
    m = bm.detection_metrics(images, ["a"])
    assert m["map50"] == 0.5 and m["per_class"]["a"]["fn"] == 1


def test_duplicate_detection_is_a_false_positive() -> None:
    # ranked: A (TP), A again (FP: A is taken), B (TP) → P/R points (1, .5), (.5, .5), (.667, 1)
    images = [([g("a", A), g("a", B)], [p("a", A, 0.9), p("a", (0.0, 0.0, 10.0, 9.0), 0.8), p("a", B, 0.7)])]
    m = bm.detection_metrics(images, ["a"])
    assert m["per_class"]["a"]["tp"] == 2 and m["per_class"]["a"]["fp"] == 1
    assert m["map50"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3, abs=1e-4)
    # a duplicate ranked below every true match costs nothing
    low = [([g("a", A)], [p("a", A, 0.9), p("a", A, 0.1)])]
    assert bm.detection_metrics(low, ["a"])["map50"] == 1.0


def test_class_mismatch_and_classes_without_ground_truth() -> None:
    m = bm.detection_metrics([([g("a", A)], [p("b", A, 0.9)])], ["a", "b"])
    assert m["per_class"]["a"]["ap50"] == 0.0 and m["per_class"]["a"]["fn"] == 1
    assert m["per_class"]["b"]["ap50"] is None and m["per_class"]["b"]["fp"] == 1  # no gt: left out of mAP
    assert m["map50"] == 0.0 and m["classes_scored"] == 1


def test_iou_threshold_boundary_and_greedy_order() -> None:
    half = (0.0, 0.0, 10.0, 5.0)  # IoU with A = 0.5 exactly: counts at the 0.5 threshold
    assert bm.match([A], [half], [0.9], 0.5)[0].tolist() == [True]
    assert bm.match([A], [(0.0, 0.0, 10.0, 4.0)], [0.9], 0.5)[0].tolist() == [False]
    # the higher-scored prediction takes the box even when the other overlaps it better
    is_tp, matched = bm.match([A], [A, half], [0.5, 0.9])
    assert is_tp.tolist() == [False, True] and matched == 1


def test_image_counts_and_empty_cases() -> None:
    counts = bm.image_counts([g("a", A), g("b", B)], [p("a", A, 0.9), p("a", B, 0.8)])
    assert {k: (v["tp"], v["fp"], v["fn"]) for k, v in counts.items()} == {"a": (1, 1, 0), "b": (0, 0, 1)}
    assert bm.average_precision([], [], 0) is None
    assert bm.average_precision([], [], 3) == 0.0
    assert bm.detection_metrics([([], [])], ["a"])["map50"] == 0.0
