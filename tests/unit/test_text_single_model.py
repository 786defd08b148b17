"""Validation, training, evaluation and Labelbox prediction rows for text_single_classification."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from jobs.tasks import classification
from jobs.tasks.base import Dataset, DatasetError, ModelError, ParamError, model_digest
from jobs.tasks.text_single_classification import TASK, _train_params

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "labelbox"  # Labelbox's own import files
VOCAB = {
    "sports": "goal match striker referee league stadium keeper penalty coach season tackle fans".split(),
    "cooking": "recipe oven garlic simmer butter flour bake sauce spoon onion roast dough".split(),
    "finance": "stocks bond market investor dividend bank interest shares inflation fund loan equity".split(),
}
COMMON = "the a today we really about new very some this that it was is and".split()


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def synthetic(n_per_class: int = 30, seed: int = 0, noise: int = 2) -> Dataset:
    """Short texts: 3 topic words, common words and `noise` words from other topics.
    Splits by index: 70% train, 10% validation, 20% test (held out)."""
    rng = random.Random(seed)
    every = [w for words in VOCAB.values() for w in words]
    examples = []
    for cls, words in VOCAB.items():
        for i in range(n_per_class):
            tokens = rng.sample(words, 3) + rng.sample(COMMON, 4) + rng.sample(every, noise)
            rng.shuffle(tokens)
            split = "train" if i % 10 < 7 else "validation" if i % 10 == 7 else "test"
            examples.append(
                {"data_row_id": f"{cls}-{i}", "split": split, "text": " ".join(tokens), "target": cls}
            )
    unlabeled = [
        {
            "data_row_id": "u-1",
            "split": "unassigned",
            "text": "garlic butter sauce",
            "target": None,
            "reason": "no_label",
        }
    ]
    return Dataset(
        examples=examples,
        label_map={"question": "topic", "classes": sorted(VOCAB)},
        stats={"model_run_id": "mr-synth"},
        predict_only=unlabeled,
    )


# --- validation ------------------------------------------------------------------------------


def test_validation_names_class_and_split() -> None:
    ds = synthetic(10)
    ds.examples = [e for e in ds.examples if not (e["target"] == "finance" and e["split"] == "test")]
    with pytest.raises(DatasetError) as err:
        TASK.validate(ds, {"train": 5, "validation": 1, "test": 1})
    assert str(err.value) == 'too few examples: class "finance" has 0 in split "test" (minimum 1)'


def test_validation_reports_how_many_more_problems() -> None:
    ds = synthetic(10)
    with pytest.raises(
        DatasetError,
        match=r'class "cooking" has 7 in split "train" \(minimum 8\); 2 more class/split pairs are also',
    ):
        TASK.validate(ds, {"train": 8, "validation": 1, "test": 1})


def test_validation_needs_two_classes_and_some_rows() -> None:
    ds = synthetic(10)
    ds.examples = [e for e in ds.examples if e["target"] == "sports"]
    ds.label_map["classes"] = ["sports"]
    with pytest.raises(DatasetError, match=r'need at least 2 classes to train, found 1 \("sports"\)'):
        TASK.validate(ds, {"train": 1, "validation": 1, "test": 1})
    ds.examples, ds.label_map["classes"] = [], []
    with pytest.raises(DatasetError, match="no labeled examples"):
        TASK.validate(ds, {"train": 1, "validation": 1, "test": 1})


def test_validation_passes_on_enough_data() -> None:
    TASK.validate(synthetic(10), {"train": 5, "validation": 1, "test": 1})


@pytest.mark.parametrize(
    "params",
    [
        {"C": -1},
        {"C": []},
        {"C": "big"},
        {"class_weight": "auto"},
        {"max_iter": "many"},
        {"refit_on_validation": "yes"},
        {"char_analyzer": "word"},
    ],
)
def test_bad_params_are_named(params: dict[str, Any]) -> None:
    with pytest.raises(ParamError, match=f"param {next(iter(params))}"):
        _train_params(params)


# --- train + evaluate ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, str, dict[str, Any]]:
    ds = synthetic(30)
    model_dir = str(tmp_path_factory.mktemp("model") / "model")
    metrics = TASK.train(ds, model_dir, {"C": [0.3, 3.0]}, _quiet)
    return ds, model_dir, metrics


def test_train_writes_self_contained_model(trained) -> None:
    ds, model_dir, metrics = trained
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    assert meta["model_type"] == "text_single_classification"
    assert meta["classes"] == ["cooking", "finance", "sports"]
    assert meta["question"] == "topic"
    assert (Path(model_dir) / meta["file"]).exists()
    assert metrics["C"] in (0.3, 3.0)
    assert metrics["train_size"] == 63 and metrics["validation_size"] == 9
    assert 0.0 <= metrics["validation_macro_f1"] <= 1.0
    assert metrics["train_seconds"] >= 0


def test_quality_above_chance_on_held_out_rows(trained) -> None:
    ds, model_dir, _ = trained
    evaluation = TASK.evaluate(ds, TASK.load_predictor(model_dir, model_digest(model_dir)), _quiet)
    m = evaluation.metrics
    assert m["test_size"] == 18
    # chance is 1/3; the topic words make this easy for any working model
    assert m["accuracy"] >= 0.8, m
    assert m["macro_f1"] >= 0.8, m
    assert m["confusion_matrix"]["labels"] == ["cooking", "finance", "sports"]
    assert sum(map(sum, classification.confusion_matrix(m["confusion_matrix"]))) == 18
    assert [r["true"] for r in m["confusion_matrix"]["rows"]] == ["cooking", "finance", "sports"]
    assert set(m["per_class"]) == {"cooking", "finance", "sports"}
    assert evaluation.summary["accuracy"] == m["accuracy"]
    assert evaluation.summary["predicted_rows"] == len(ds.all_rows()) == 91


def test_predictor_scores_and_instances(trained) -> None:
    _, model_dir, _ = trained
    predictor = TASK.load_predictor(model_dir, model_digest(model_dir))
    rows = predictor.parse_instances(
        ["oven roast dough", {"text": "stocks and bond market"}, {"content": "goal"}]
    )
    out = predictor.predict(rows)
    assert [p["label"] for p in out[:2]] == ["cooking", "finance"]
    for p in out:
        assert set(p["scores"]) == {"cooking", "finance", "sports"}
        assert abs(sum(p["scores"].values()) - 1.0) < 1e-3
        assert p["confidence"] == max(p["scores"].values())
    with pytest.raises(ValueError, match="instance 1"):
        predictor.parse_instances(["ok", {"txt": 1}])


def test_load_predictor_errors(tmp_path: Path, trained) -> None:
    with pytest.raises(ModelError, match="no trained model"):
        TASK.load_predictor(str(tmp_path))
    (tmp_path / "model.json").write_text(json.dumps({"model_type": "ner"}))
    with pytest.raises(ModelError, match="is a ner model"):
        TASK.load_predictor(str(tmp_path))


# --- Labelbox rows vs Labelbox's own import fixtures ---------------------------------------


def _fixture(name: str) -> list[dict[str, Any]]:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def evaluation(trained):
    ds, model_dir, _ = trained
    return ds, TASK.evaluate(ds, TASK.load_predictor(model_dir, model_digest(model_dir)), _quiet)


def test_classification_rows_match_fixture_shape(evaluation) -> None:
    ds, ev = evaluation
    ref = _fixture("classification_import_name_only.json")[0]  # radio answer by name
    preds = [r for r in ev.prediction_rows if "answer" in r]
    assert len(preds) == len(ds.all_rows())  # every data row, unlabeled ones included
    assert {r["dataRow"]["id"] for r in preds} == {r["data_row_id"] for r in ds.all_rows()}
    for row in preds:
        assert set(row) <= set(ref)
        assert set(row["answer"]) <= set(ref["answer"])
        assert set(row["dataRow"]) == set(ref["dataRow"]) == {"id"}
        assert row["name"] == "topic"
        assert row["answer"]["name"] in VOCAB
        assert 0.0 <= row["answer"]["confidence"] <= 1.0


def test_confusion_rows_match_fixture_shape(evaluation) -> None:
    ds, ev = evaluation
    ref = _fixture("custom_confusion_matrix_import.json")[1]  # featureName, no subclass
    metric_rows = [r for r in ev.prediction_rows if "metricValue" in r]
    test_ids = {e["data_row_id"] for e in ds.split("test")}
    assert len(metric_rows) == 3 * len(test_ids)
    for row in metric_rows:
        assert set(row) == set(ref)
        assert row["aggregation"] == "CONFUSION_MATRIX"
        assert row["dataRow"]["id"] in test_ids
        tp, fp, tn, fn = row["metricValue"]
        assert all(isinstance(v, int) for v in row["metricValue"]) and tp + fp + tn + fn == 1
    uuids = [r["uuid"] for r in ev.prediction_rows]
    assert len(set(uuids)) == len(uuids)


def test_confusion_rows_agree_with_metrics(evaluation) -> None:
    _, ev = evaluation
    totals: dict[str, list[int]] = {}
    for row in ev.prediction_rows:
        if "metricValue" in row:
            acc = totals.setdefault(row["featureName"], [0, 0, 0, 0])
            for i, v in enumerate(row["metricValue"]):
                acc[i] += v
    labels = ev.metrics["confusion_matrix"]["labels"]
    matrix = classification.confusion_matrix(ev.metrics["confusion_matrix"])
    for i, cls in enumerate(labels):
        tp, fp, _, fn = totals[cls]
        assert tp == matrix[i][i]
        assert fp == sum(matrix[r][i] for r in range(len(labels))) - matrix[i][i]
        assert fn == sum(matrix[i]) - matrix[i][i]


def test_metrics_by_hand() -> None:
    m = classification.metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["per_class"]["b"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}
    assert m["macro_f1"] == round((2 / 3 + 0.8) / 2, 4)
    assert m["confusion_matrix"] == {
        "labels": ["a", "b"],
        "rows": [{"true": "a", "predicted": [1, 1]}, {"true": "b", "predicted": [0, 2]}],
    }
    assert classification.confusion_matrix(m["confusion_matrix"]) == [[1, 1], [0, 2]]
