"""CRF training, evaluation, serving and Labelbox rows for ner on tiny synthetic tweets (fast, with a
held-out check that can fail), prediction rows against Labelbox's text-entity import fixture."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from jobs.tasks.base import Dataset, ParamError, model_digest
from jobs.tasks.ner import TASK, _train_params, score_spans

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "labelbox"  # Labelbox's own import files
PERSONS = ["Alice Smith", "Bob", "Carlos Díaz", "Dana", "Emma Stone", "Frank", "Grace Hopper", "Hugo"]
CITIES = ["Paris", "London", "New York", "Tokyo", "Berlin", "Zürich", "Oslo", "Lima"]
TEMPLATES = [
    "I met {P} in {C} today",
    "{P} flew to {C} !",
    "lol {C} is so cold right now",
    "@user saw {P} at the mall",
    "so tired of this weather tbh",
    "great night with {P} 🎉 #fun",
    "moving to {C} next week",
]


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def synthetic(n: int = 100, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        template = rng.choice(TEMPLATES)
        text, entities = "", []
        for piece in template.replace("{", "\x00{").replace("}", "}\x00").split("\x00"):
            if piece in ("{P}", "{C}"):
                value = rng.choice(PERSONS if piece == "{P}" else CITIES)
                entities.append({"type": "person" if piece == "{P}" else "geo-loc", "start": len(text),
                                 "end": len(text) + len(value) - 1})
                text += value
            else:
                text += piece
        split = "train" if i % 10 < 7 else "validation" if i % 10 == 7 else "test"
        examples.append({"data_row_id": f"d{i}", "split": split, "text": text, "entities": entities})
    predict_only = [{"data_row_id": "u1", "split": "unassigned", "text": "I met Dana in Oslo", "entities": [],
                     "reason": "no_label"}]
    return Dataset(examples=examples, label_map={"entity_types": ["geo-loc", "person"], "offsets": "codepoint"},
                   stats={"model_run_id": "mr"}, predict_only=predict_only)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, str, dict[str, Any]]:
    ds = synthetic()
    model_dir = str(tmp_path_factory.mktemp("ner") / "model")
    metrics = TASK.train(ds, model_dir, {"c1": [0.05], "c2": [0.01, 0.1], "max_iterations": 50}, _quiet)
    return ds, model_dir, metrics


def test_train_writes_self_contained_model(trained) -> None:
    _, model_dir, metrics = trained
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    assert meta["model_type"] == "ner" and meta["entity_types"] == ["geo-loc", "person"]
    assert (Path(model_dir) / meta["file"]).exists()
    assert metrics["c2"] in (0.01, 0.1) and len(metrics["grid"]) == 2 and metrics["train_size"] == 70


@pytest.fixture(scope="module")
def evaluation(trained):
    ds, model_dir, _ = trained
    return ds, TASK.evaluate(ds, TASK.load_predictor(model_dir, model_digest(model_dir)), _quiet)


def test_quality_above_chance_on_held_out_rows(evaluation) -> None:
    ds, ev = evaluation
    m = ev.metrics
    assert m["test_size"] == 20 and m["predicted_rows"] == 101
    assert m["entity_f1"] >= 0.8, m  # chance (random spans) is ~0
    assert set(m["per_type"]) == {"geo-loc", "person"}
    assert {"entity_f1", "entity_precision", "entity_recall", "per_type"} <= set(ev.summary)


def test_prediction_rows_match_text_entity_fixture(evaluation) -> None:
    ds, ev = evaluation
    ref = json.loads((FIXTURES / "text_entity_import.json").read_text())[0]
    preds = [r for r in ev.prediction_rows if "location" in r]
    texts = {r["data_row_id"]: r["text"] for r in ds.all_rows()}
    assert "u1" in {r["dataRow"]["id"] for r in preds}  # predict-only rows are predicted too
    for row in preds:
        assert set(row) <= set(ref) and set(row["location"]) == set(ref["location"])
        assert set(row["dataRow"]) == {"id"} and 0.0 <= row["confidence"] <= 1.0
        span = texts[row["dataRow"]["id"]][row["location"]["start"] : row["location"]["end"] + 1]
        assert span == span.strip() and span, row  # inclusive end: whole tokens, no spaces
    u1 = sorted((r["name"], texts["u1"][r["location"]["start"] : r["location"]["end"] + 1])
                for r in preds if r["dataRow"]["id"] == "u1")
    assert u1 == [("geo-loc", "Oslo"), ("person", "Dana")]
    cm_ref = json.loads((FIXTURES / "custom_confusion_matrix_import.json").read_text())[1]
    metrics = [r for r in ev.prediction_rows if "metricValue" in r]
    assert len(metrics) == 20 * 2
    for row in metrics:
        assert set(row) <= set(cm_ref) and len(row["metricValue"]) == 4
    assert sum(r["metricValue"][0] + r["metricValue"][3] for r in metrics) == ev.metrics["gold_entities"]


def test_predictor_serving_instances(trained) -> None:
    _, model_dir, _ = trained
    predictor = TASK.load_predictor(model_dir, model_digest(model_dir))
    out = predictor.predict(predictor.parse_instances(["I met Grace Hopper in Zürich today", {"text": ""}]))
    assert [(e["type"], e["text"]) for e in out[0]["entities"]] == [("person", "Grace Hopper"), ("geo-loc", "Zürich")]
    assert out[0]["entities"][1]["start"] == 22 and out[0]["entities"][1]["end"] == 27
    assert out[1] == {"entities": []}
    with pytest.raises(ValueError, match="instance 0"):
        predictor.parse_instances([3])


def test_utf16_offsets_are_written_back(trained) -> None:
    ds, model_dir, _ = trained
    ds = Dataset(examples=[{"data_row_id": "e", "split": "test", "text": "🎉 I met Bob in Oslo", "entities": []}],
                 label_map={"entity_types": ["geo-loc", "person"], "offsets": "utf16"})
    ev = TASK.evaluate(ds, TASK.load_predictor(model_dir, model_digest(model_dir)), _quiet)
    locs = sorted((r["name"], r["location"]["start"], r["location"]["end"]) for r in ev.prediction_rows
                  if "location" in r)
    assert locs == [("geo-loc", 16, 19), ("person", 9, 11)]  # code points 15–18 and 8–10, + 1 for 🎉


def test_score_spans_is_exact_match() -> None:
    m = score_spans([[("p", 0, 3), ("c", 5, 9)]], [[("p", 0, 3), ("c", 5, 8), ("c", 11, 12)]], ["c", "p"])
    assert (m["entity_precision"], m["entity_recall"], m["entity_f1"]) == (0.3333, 0.5, 0.4)
    assert m["per_type"]["p"]["f1"] == 1.0 and m["per_type"]["c"]["support"] == 1


@pytest.mark.parametrize("params", [{"c1": -1}, {"c2": "x"}, {"max_iterations": 0}, {"refit_on_validation": "y"}])
def test_bad_params_are_named(params: dict[str, Any]) -> None:
    with pytest.raises(ParamError, match=f"param {next(iter(params))}"):
        _train_params(params)
