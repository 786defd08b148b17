"""Training, evaluation, serving rows and Labelbox prediction/metric rows for text_multi_classification
on a tiny synthetic multi-label dataset (fast, with a held-out check that can fail)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from jobs.tasks import multilabel
from jobs.tasks.base import Dataset, ModelError, ParamError, model_digest
from jobs.tasks.text_multi_classification import TASK, _train_params, decide

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "labelbox"  # Labelbox's own import files
VOCAB = {
    "sports": "goal match striker referee league stadium keeper penalty".split(),
    "food": "recipe oven garlic simmer butter flour bake sauce".split(),
    "finance": "stocks bond market investor dividend bank shares loan".split(),
}
COMMON = "the a today we really about new very some this that it was is and".split()


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def synthetic(n: int = 90, seed: int = 0, radios: bool = False) -> Dataset:
    """Texts with topic words for a random set of 0–2 topics; splits by index 70/10/20."""
    rng = random.Random(seed)
    topics = sorted(VOCAB)
    examples = []
    for i in range(n):
        chosen = sorted(rng.sample(topics, rng.choice([0, 1, 1, 2])))
        words = rng.sample(COMMON, 5) + [w for t in chosen for w in rng.sample(VOCAB[t], 3)]
        rng.shuffle(words)
        split = "train" if i % 10 < 7 else "validation" if i % 10 == 7 else "test"
        targets = [f"topic/{t}" for t in chosen[:1]] if radios else chosen
        examples.append({"data_row_id": f"d{i}", "split": split, "text": " ".join(words), "targets": targets})
    classes = [f"topic/{t}" for t in topics] if radios else topics
    label_map = (
        {"mode": "radios", "question": None, "questions": ["topic"], "classes": classes}
        if radios
        else {"mode": "checklist", "question": "topics", "questions": ["topics"], "classes": classes}
    )
    predict_only = [
        {"data_row_id": "u1", "split": "unassigned", "text": "garlic butter bank", "targets": [], "reason": "no_label"}
    ]
    return Dataset(examples=examples, label_map=label_map, stats={"model_run_id": "mr"}, predict_only=predict_only)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, str, dict[str, Any]]:
    ds = synthetic()
    model_dir = str(tmp_path_factory.mktemp("tm") / "model")
    return ds, model_dir, TASK.train(ds, model_dir, {"C": [1.0, 10.0]}, _quiet)


def test_train_writes_self_contained_model(trained) -> None:
    _, model_dir, metrics = trained
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    assert meta["model_type"] == "text_multi_classification" and meta["mode"] == "checklist"
    assert meta["classes"] == ["finance", "food", "sports"] and set(meta["thresholds"]) == set(meta["classes"])
    assert all(0 < t < 1 for t in meta["thresholds"].values())
    assert (Path(model_dir) / meta["file"]).exists()
    assert metrics["C"] in (1.0, 10.0) and metrics["train_size"] == 63 and metrics["validation_size"] == 9


def test_quality_above_chance_on_held_out_rows(trained) -> None:
    ds, model_dir, _ = trained
    ev = TASK.evaluate(ds, TASK.load_predictor(model_dir, model_digest(model_dir)), _quiet)
    m = ev.metrics
    assert m["test_size"] == 18
    # random guessing scores ~0.4 micro-F1 here; topic words make it easy for a working model
    assert m["micro_f1"] >= 0.8, m
    assert m["macro_f1"] >= 0.7 and m["subset_accuracy"] >= 0.5, m
    assert set(m["per_class"]) == {"finance", "food", "sports"}
    assert ev.summary["micro_f1"] == m["micro_f1"] and ev.summary["predicted_rows"] == 91


def _nested_array(value: Any, in_array: bool = False) -> bool:
    if isinstance(value, list):
        return in_array or any(_nested_array(v, True) for v in value)
    if isinstance(value, dict):
        return any(_nested_array(v) for v in value.values())
    return False


def test_rows_match_labelbox_fixture_shapes(trained) -> None:
    ds, model_dir, _ = trained
    ev = TASK.evaluate(ds, TASK.load_predictor(model_dir, model_digest(model_dir)), _quiet)
    assert not _nested_array(ev.summary) and not _nested_array(ev.metrics)
    ref = json.loads((FIXTURES / "classification_import_name_only.json").read_text())[1]  # checklist
    preds = [r for r in ev.prediction_rows if "answer" in r]
    # every data row is predicted; an empty set is uploaded as no row (an unticked checklist)
    assert len(preds) == len(ds.all_rows()) - ev.metrics["empty_prediction_rows"] > 50
    assert {r["dataRow"]["id"] for r in preds} <= {r["data_row_id"] for r in ds.all_rows()}
    assert all(row["answer"] for row in preds)
    for row in preds:
        assert set(row) <= set(ref) and row["name"] == "topics"
        assert isinstance(row["answer"], list)
        for answer in row["answer"]:
            assert set(answer) <= set(ref["answer"][0]) and answer["name"] in VOCAB
            assert 0.0 <= answer["confidence"] <= 1.0
    cm_ref = json.loads((FIXTURES / "custom_confusion_matrix_import.json").read_text())[1]
    metrics = [r for r in ev.prediction_rows if "metricValue" in r]
    assert len(metrics) == 18 * 3
    for row in metrics:
        assert set(row) <= set(cm_ref) and row["aggregation"] == "CONFUSION_MATRIX"
        assert len(row["metricValue"]) == 4 and sum(row["metricValue"]) == 1
    tp_fn = sum(r["metricValue"][0] + r["metricValue"][3] for r in metrics)
    assert tp_fn == sum(len(e["targets"]) for e in ds.split("test")) == sum(
        c["support"] for c in ev.metrics["per_class"].values()
    )


def test_predictor_instances(trained) -> None:
    _, model_dir, _ = trained
    predictor = TASK.load_predictor(model_dir, model_digest(model_dir))
    out = predictor.predict(predictor.parse_instances(["garlic butter bake the stocks bond market", {"text": "x"}]))
    assert out[0]["labels"] == ["finance", "food"]
    assert set(out[0]["scores"]) == {"finance", "food", "sports"}
    with pytest.raises(ValueError, match="instance 0"):
        predictor.parse_instances([{"txt": 1}])


def test_radio_targets_give_one_radio_row_per_question(tmp_path: Path) -> None:
    ds = synthetic(radios=True)
    TASK.train(ds, str(tmp_path / "m"), {"C": 10.0}, _quiet)
    ev = TASK.evaluate(ds, TASK.load_predictor(str(tmp_path / "m"), model_digest(str(tmp_path / "m"))), _quiet)
    radios = [r for r in ev.prediction_rows if "answer" in r]
    assert radios and all(r["name"] == "topic" and isinstance(r["answer"], dict) for r in radios)
    assert len({r["dataRow"]["id"] for r in radios}) == len(radios)  # at most one answer per question
    assert all(r["answer"]["name"] in VOCAB for r in radios)


def test_decide_picks_one_answer_per_radio_question() -> None:
    scores = {"a/x": 0.9, "a/y": 0.7, "b/z": 0.2, "b/w": 0.6}
    assert decide(scores, dict.fromkeys(scores, 0.5), "radios") == ["a/x", "b/w"]
    assert decide(scores, dict.fromkeys(scores, 0.5), "checklist") == ["a/x", "a/y", "b/w"]
    assert multilabel.radio_rows("d", {"a/x": 0.9})[0]["answer"] == {"name": "x", "confidence": 0.9}


def test_metrics_definitions() -> None:
    m = multilabel.metrics([{"a"}, {"a", "b"}, set()], [{"a"}, {"a"}, {"b"}], ["a", "b"])
    assert (m["micro_precision"], m["micro_recall"]) == (0.6667, 0.6667)
    assert m["subset_accuracy"] == 0.3333 and m["per_class"]["b"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1,
    }
    assert m["macro_f1"] == 0.5


@pytest.mark.parametrize("params", [{"C": 0}, {"threshold": 2}, {"threshold": "best"}, {"max_iter": -1},
                                    {"refit_on_validation": 1}])
def test_bad_params_are_named(params: dict[str, Any]) -> None:
    with pytest.raises(ParamError, match=f"param {next(iter(params))}"):
        _train_params(params)


def test_load_predictor_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no trained model"):
        TASK.load_predictor(str(tmp_path))
    (tmp_path / "model.json").write_text(json.dumps({"model_type": "ner"}))
    with pytest.raises(ModelError, match="is a ner model"):
        TASK.load_predictor(str(tmp_path))
