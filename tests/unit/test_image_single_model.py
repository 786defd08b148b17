"""Training, evaluation, serving instances and Labelbox rows for image_single_classification
(on tiny synthetic shape images, so it runs in seconds)."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from jobs import serving
from jobs.tasks.base import Dataset, ModelError, ParamError
from jobs.tasks.image_single_classification import TASK, train_params
from tests.unit import image_fixtures

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "labelbox"  # Labelbox's own import files
PARAMS = {"epochs": 6, "batch_size": 16, "threads": 1}


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("img-single")
    ds = image_fixtures.single_dataset(root / "images")
    model_dir = str(root / "model")
    return ds, model_dir, TASK.train(ds, model_dir, PARAMS, _quiet)


@pytest.fixture(scope="module")
def evaluation(trained):
    ds, model_dir, _ = trained
    return ds, TASK.evaluate(ds, TASK.load_predictor(model_dir), _quiet)


def test_train_writes_self_contained_model(trained) -> None:
    _, model_dir, metrics = trained
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    assert meta["model_type"] == "image_single_classification"
    assert meta["classes"] == ["box", "hbar", "vbar"] and meta["question"] == "shape"
    assert (meta["image_size"], meta["channels"]) == (18, "L")
    assert (Path(model_dir) / meta["file"]).exists()
    assert metrics["train_size"] == 54 and metrics["validation_size"] == 18
    assert metrics["epochs_run"] <= 6 and 1 <= metrics["best_epoch"] <= metrics["epochs_run"]
    assert metrics["threads"] == 1 and metrics["train_seconds"] >= 0


def test_quality_above_chance_on_held_out_rows(evaluation) -> None:
    _, ev = evaluation
    assert ev.metrics["test_size"] == 18
    assert ev.metrics["accuracy"] > 0.5  # 3 balanced classes: chance is 0.33
    assert set(ev.summary) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix", "predicted_rows"}


def test_training_is_deterministic(trained, tmp_path: Path) -> None:
    ds, model_dir, metrics = trained
    again = TASK.train(ds, str(tmp_path / "m2"), {**PARAMS, "epochs": 2}, _quiet)
    twice = TASK.train(ds, str(tmp_path / "m3"), {**PARAMS, "epochs": 2}, _quiet)
    assert again["history"][-1]["loss"] == twice["history"][-1]["loss"]


def test_prediction_rows_match_fixture_shape(evaluation) -> None:
    ds, ev = evaluation
    ref = json.loads((FIXTURES / "classification_import_name_only.json").read_text())[0]
    preds = [r for r in ev.prediction_rows if "answer" in r]
    assert {r["dataRow"]["id"] for r in preds} == {r["data_row_id"] for r in ds.all_rows()}
    assert len(preds) == len(ds.all_rows())  # the predict-only row too
    for row in preds:
        assert set(row) <= set(ref) and set(row["answer"]) <= set(ref["answer"])
        assert set(row["dataRow"]) == {"id"} and row["name"] == "shape"
        assert row["answer"]["name"] in ("box", "hbar", "vbar") and 0.0 <= row["answer"]["confidence"] <= 1.0


def test_confusion_rows_match_fixture_shape(evaluation) -> None:
    ds, ev = evaluation
    ref = json.loads((FIXTURES / "custom_confusion_matrix_import.json").read_text())[1]
    metric_rows = [r for r in ev.prediction_rows if "metricValue" in r]
    assert len(metric_rows) == 3 * len(ds.split("test"))
    for row in metric_rows:
        assert set(row) == set(ref) and row["aggregation"] == "CONFUSION_MATRIX"
        assert sum(row["metricValue"]) == 1
    uuids = [r["uuid"] for r in ev.prediction_rows]
    assert len(set(uuids)) == len(uuids)


def test_predictor_parses_vertex_image_instances(trained) -> None:
    ds, model_dir, _ = trained
    predictor = TASK.load_predictor(model_dir)
    b64 = base64.b64encode(Path(ds.examples[0]["image"]).read_bytes()).decode()
    rows = predictor.parse_instances([{"b64": b64}, {"image": {"b64": b64}}, {"content": b64}, b64])
    out = predictor.predict(rows)
    assert len({p["label"] for p in out}) == 1  # the same image four ways
    for p in out:
        assert set(p["scores"]) == {"box", "hbar", "vbar"}
        assert abs(sum(p["scores"].values()) - 1.0) < 1e-3 and p["confidence"] == max(p["scores"].values())
    with pytest.raises(ValueError, match="instance 1"):
        predictor.parse_instances([{"b64": b64}, {"text": "x"}])
    with pytest.raises(ValueError, match="instance 0: not a readable image"):
        predictor.parse_instances([{"b64": base64.b64encode(b"junk").decode()}])


def test_served_over_http(trained) -> None:
    ds, model_dir, _ = trained
    server = serving.make_server(TASK.load_predictor(model_dir), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        b64 = base64.b64encode(Path(ds.examples[0]["image"]).read_bytes()).decode()
        reply = serving.predict(f"http://127.0.0.1:{server.server_address[1]}/predict", [{"b64": b64}])
        assert reply["predictions"][0]["label"] in ("box", "hbar", "vbar")
    finally:
        server.shutdown()
        server.server_close()


def test_load_predictor_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no trained model"):
        TASK.load_predictor(str(tmp_path))
    (tmp_path / "model.json").write_text(json.dumps({"model_type": "ner"}))
    with pytest.raises(ModelError, match="is a ner model"):
        TASK.load_predictor(str(tmp_path))
    (tmp_path / "model.json").write_text(json.dumps({"model_type": "image_single_classification"}))
    with pytest.raises(ModelError, match="no trained model file"):
        TASK.load_predictor(str(tmp_path))


@pytest.mark.parametrize(
    "params",
    [{"epochs": 0}, {"lr": "fast"}, {"batch_size": 1}, {"augment": "yes"}, {"channels": "CMYK"}, {"image_size": -1}],
)
def test_bad_params_are_named(params: dict[str, Any]) -> None:
    with pytest.raises(ParamError, match=f"param {next(iter(params))}"):
        train_params(params)


def test_time_budget_cuts_epochs_and_schedule(trained, tmp_path: Path) -> None:
    ds, _, _ = trained
    metrics = TASK.train(ds, str(tmp_path / "m"), {**PARAMS, "epochs": 5, "max_seconds": 0.001}, _quiet)
    assert metrics["epochs_run"] == 1 and metrics["stopped_by"] == "time_budget"
    assert (tmp_path / "m" / "model.json").exists()


def test_lr_schedule_warms_up_then_anneals() -> None:
    from jobs.tasks.cnn import lr_at

    lrs = [lr_at(1.0, s, 100) for s in range(101)]
    assert lrs[0] < 0.1 and max(lrs) == lrs[20] == 1.0 and lrs[100] < 1e-6
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))
