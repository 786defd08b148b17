"""Training, thresholds, evaluation and Labelbox rows for image_multi_classification (tiny synthetic
images with 1–2 shapes each, so it runs in seconds)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.tasks import image_multi_classification as imc
from jobs.tasks.base import Dataset, ParamError
from jobs.tasks.image_multi_classification import TASK
from tests.unit import image_fixtures

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "labelbox"  # Labelbox's own import files
PARAMS = {"epochs": 8, "batch_size": 16, "threads": 1}


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("img-multi")
    ds = image_fixtures.multi_dataset(root / "images")
    model_dir = str(root / "model")
    return ds, model_dir, TASK.train(ds, model_dir, PARAMS, _quiet)


@pytest.fixture(scope="module")
def evaluation(trained):
    ds, model_dir, _ = trained
    return ds, TASK.evaluate(ds, TASK.load_predictor(model_dir), _quiet)


def test_train_writes_model_with_tuned_threshold(trained) -> None:
    _, model_dir, metrics = trained
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    assert meta["model_type"] == "image_multi_classification" and meta["mode"] == "checklist"
    assert meta["classes"] == ["box", "hbar", "vbar"] and meta["min_one"] is True
    assert meta["threshold"] in imc.THRESHOLDS and meta["threshold"] == metrics["threshold"]
    assert meta["arch"]["pool"] == "max"
    assert metrics["train_size"] == 72 and metrics["validation_size"] == 24


def test_quality_above_chance_on_held_out_rows(evaluation) -> None:
    _, ev = evaluation
    m = ev.metrics
    assert m["test_size"] == 24
    assert m["micro_f1"] > 0.7  # predicting every class scores ~0.67 here, a random half ~0.5
    assert set(ev.summary) >= {"micro_f1", "macro_f1", "subset_accuracy", "per_class", "predicted_rows"}
    assert all(not isinstance(v, list) for v in m["per_class"].values())


def test_checklist_rows_match_fixture_shape(evaluation) -> None:
    ds, ev = evaluation
    ref = json.loads((FIXTURES / "classification_import_name_only.json").read_text())[1]  # checklist
    preds = [r for r in ev.prediction_rows if "answer" in r]
    assert {r["dataRow"]["id"] for r in preds} == {r["data_row_id"] for r in ds.all_rows()}
    for row in preds:
        assert set(row) <= set(ref) and isinstance(row["answer"], list) and row["answer"]
        assert row["name"] == "shapes" and set(row["dataRow"]) == {"id"}
        for answer in row["answer"]:
            assert set(answer) <= set(ref["answer"][0]) and 0.0 <= answer["confidence"] <= 1.0


def test_confusion_rows_per_class(evaluation) -> None:
    ds, ev = evaluation
    ref = json.loads((FIXTURES / "custom_confusion_matrix_import.json").read_text())[1]
    metric_rows = [r for r in ev.prediction_rows if "metricValue" in r]
    assert len(metric_rows) == 3 * len(ds.split("test"))
    totals: dict[str, list[int]] = {}
    for row in metric_rows:
        assert set(row) == set(ref) and sum(row["metricValue"]) == 1
        acc = totals.setdefault(row["featureName"], [0, 0, 0, 0])
        for i, v in enumerate(row["metricValue"]):
            acc[i] += v
    for cls, (tp, _, _, fn) in totals.items():
        assert tp + fn == ev.metrics["per_class"][cls]["support"]


def test_predictor_scores_and_instances(trained) -> None:
    ds, model_dir, _ = trained
    predictor = TASK.load_predictor(model_dir)
    b64 = base64.b64encode(Path(ds.examples[0]["image"]).read_bytes()).decode()
    (a, b) = predictor.predict(predictor.parse_instances([{"b64": b64}, {"image": {"b64": b64}}]))
    assert a == b and a["labels"] and set(a["scores"]) == {"box", "hbar", "vbar"}


def test_decide_and_tune_threshold() -> None:
    classes = ["a", "b", "q/x"]
    probs = np.array([[0.9, 0.6, 0.1], [0.2, 0.1, 0.3]])
    assert imc.decide(probs, 0.5, classes, "checklist", min_one=True) == [["a", "b"], ["q/x"]]
    assert imc.decide(probs, 0.5, classes, "checklist", min_one=False) == [["a", "b"], []]
    radios = ["color/red", "color/blue", "shape/round"]
    assert imc.decide(probs, 0.5, radios, "radios", min_one=True) == [["color/red", "shape/round"]] * 2
    y = np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float32)
    threshold, f1 = imc.tune_threshold(probs, y, classes, "checklist", True)
    assert threshold > 0.6 and f1 == 1.0


def test_radio_questions_predicted_as_radios(tmp_path: Path) -> None:
    """Several radios: one radio prediction per question, its most likely answer."""
    ds = image_fixtures.multi_dataset(tmp_path / "img", n=40)
    for e in ds.examples:
        e["targets"] = [f"has_box/{'yes' if 'box' in e['targets'] else 'no'}",
                        f"has_hbar/{'yes' if 'hbar' in e['targets'] else 'no'}"]
    ds.label_map = {"mode": "radios", "questions": ["has_box", "has_hbar"],
                    "classes": sorted({c for e in ds.examples for c in e["targets"]})}
    TASK.train(ds, str(tmp_path / "m"), {**PARAMS, "epochs": 2}, _quiet)
    ev = TASK.evaluate(ds, TASK.load_predictor(str(tmp_path / "m")), _quiet)
    preds = [r for r in ev.prediction_rows if "answer" in r]
    assert len(preds) == 2 * len(ds.all_rows())
    assert all(isinstance(r["answer"], dict) and r["name"] in ("has_box", "has_hbar") for r in preds)
    assert all(r["answer"]["name"] in ("yes", "no") for r in preds)


@pytest.mark.parametrize("params", [{"threshold": 1.5}, {"threshold": "auto"}])
def test_bad_threshold_is_named(trained, params: dict[str, Any], tmp_path: Path) -> None:
    ds, _, _ = trained
    with pytest.raises(ParamError, match="param threshold"):
        TASK.train(ds, str(tmp_path), params, _quiet)
