"""bounding_box train → load → evaluate in process on a few canvases (fast, not accurate), the
Labelbox rows against the shapes in tests/data/labelbox/, serving instances, and the
reference dataset builder (tight boxes, held-out digits)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.tasks import bounding_box
from jobs.tasks.base import Dataset, Evaluation
from lbtrain.adapters.labelbox import FileLabelbox
from lbtrain.datasets import mnist_boxes

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "labelbox"  # Labelbox's own import files
TINY = {"epochs": 1, "width": 8, "input_size": 64, "threads": 1}


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Any, Evaluation, dict, Path]:
    root = tmp_path_factory.mktemp("bbox")
    summary = mnist_boxes.build("bounding_box", str(root / "lb"), "mr-tiny", limit=30)
    rows = list(FileLabelbox(str(root / "lb")).export_rows("mr-tiny"))
    dataset = bounding_box.TASK.convert(rows, "mr-tiny", {}, str(root / "etl"), _quiet)
    train_metrics = bounding_box.TASK.train(dataset, str(root / "model"), TINY, _quiet)
    predictor = bounding_box.TASK.load_predictor(str(root / "model"))
    evaluation = bounding_box.TASK.evaluate(dataset, predictor, _quiet)
    assert summary["rows"] == 30
    return dataset, predictor, evaluation, train_metrics, root


def test_builder_writes_tight_boxes_and_splits(trained: tuple, tmp_path: Path) -> None:
    dataset, *_ = trained
    assert {s: len(dataset.split(s)) for s in ("train", "validation", "test")} == {
        "train": 22,
        "validation": 4,
        "test": 4,
    }
    from jobs.tasks import images

    for e in dataset.examples[:10]:
        img = images.load_image(e["image"])
        assert img.shape == (128, 128) and 1 <= len(e["boxes"]) <= 3
        for b in e["boxes"]:
            x0, y0 = int(b["left"]), int(b["top"])
            x1, y1 = x0 + int(b["width"]), y0 + int(b["height"])
            inside = img[y0:y1, x0:x1]
            # tight: ink touches all four edges of the box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    assert mnist_boxes.available() == {"bounding_box": ["mnist_boxes"]}


def test_test_canvases_use_held_out_digits() -> None:
    from lbtrain.datasets import mnist

    splits = mnist.digit_splits(0)
    assert not set(splits["test"]) & set(splits["train"])
    assert not set(splits["validation"]) & set(splits["train"])


def test_model_dir_and_train_metrics(trained: tuple) -> None:
    _, predictor, _, metrics, root = trained
    meta = json.loads((root / "model" / "model.json").read_text())
    assert meta["model_type"] == "bounding_box" and meta["classes"] == predictor.classes
    assert (root / "model" / "model.pt").exists()
    assert metrics["train_size"] == 22 and metrics["epochs_run"] == 1 and metrics["n_params"] > 0


class StubPredictor:
    """Fixed detections per data row (image pixels), so the rows and counts are known exactly."""

    score_threshold = 0.5

    def __init__(self, dets: dict[str, list[dict[str, Any]]]):
        self.dets = dets

    def detect(self, rows: list[dict[str, Any]], min_score: float) -> list[list[dict[str, Any]]]:
        return [[d for d in self.dets.get(r["data_row_id"], []) if d["score"] >= min_score] for r in rows]


def test_prediction_rows_match_the_labelbox_fixtures(trained: tuple) -> None:
    dataset = trained[0]
    test = dataset.split("test")[0]
    gt = test["boxes"][0]
    exact = (gt["left"], gt["top"], gt["left"] + gt["width"], gt["top"] + gt["height"])
    other = next(c for c in dataset.label_map["classes"] if c != gt["name"])
    train_id = dataset.split("train")[0]["data_row_id"]
    stub = StubPredictor(
        {
            test["data_row_id"]: [
                {"name": gt["name"], "score": 0.9, "box": exact},  # TP
                {"name": gt["name"], "score": 0.8, "box": exact},  # duplicate: FP
                {"name": other, "score": 0.7, "box": (0.0, 0.0, 10.0, 10.0)},  # FP of another class
                {"name": other, "score": 0.2, "box": (50.0, 50.0, 60.0, 60.0)},  # below the threshold
            ],
            train_id: [{"name": other, "score": 0.6, "box": (1.0, 2.0, 11.5, 22.25)}],
        }
    )
    evaluation = bounding_box.TASK.evaluate(dataset, stub, _quiet)
    boxes = [r for r in evaluation.prediction_rows if "bbox" in r]
    metrics = [r for r in evaluation.prediction_rows if r.get("aggregation") == "CONFUSION_MATRIX"]
    assert len(boxes) + len(metrics) == len(evaluation.prediction_rows)
    assert len(boxes) == 4  # score-filtered
    fixture = json.loads((FIXTURES / "rectangle_import.json").read_text())[0]
    for r in boxes:
        assert set(r) == (set(fixture) - {"classifications"}) | {"confidence"}
        assert set(r["bbox"]) == set(fixture["bbox"]) and set(r["dataRow"]) == {"id"}
        assert 0.0 <= r["confidence"] <= 1.0 and r["name"] in dataset.label_map["classes"]
    train_row = next(r for r in boxes if r["dataRow"]["id"] == train_id)
    assert train_row["bbox"] == {"top": 2.0, "left": 1.0, "height": 20.25, "width": 10.5}
    assert len({r["uuid"] for r in evaluation.prediction_rows}) == len(evaluation.prediction_rows)

    cm_fixture = json.loads((FIXTURES / "custom_confusion_matrix_import.json").read_text())[1]
    assert {r["dataRow"]["id"] for r in metrics} <= {e["data_row_id"] for e in dataset.split("test")}
    for r in metrics:
        assert set(r) == set(cm_fixture) and r["metricName"] == cm_fixture["metricName"]
    mine = {r["featureName"]: r["metricValue"] for r in metrics if r["dataRow"]["id"] == test["data_row_id"]}
    n_gt = sum(1 for b in test["boxes"] if b["name"] == gt["name"])
    assert mine[gt["name"]] == [1, 1, 0, n_gt - 1]
    n_other = sum(1 for b in test["boxes"] if b["name"] == other)
    assert mine[other] == [0, 1, 0, n_other]
    assert evaluation.metrics["per_class"][gt["name"]]["tp"] >= 1


def test_evaluation_metrics_are_firestore_friendly(trained: tuple) -> None:
    from tests.unit.test_jobs_main import _has_nested_array

    _, _, evaluation, _, _ = trained
    m, s = evaluation.metrics, evaluation.summary
    assert 0.0 <= m["map50"] <= 1.0 and m["test_size"] == 4 and m["predicted_rows"] == 30
    assert set(s["per_class_ap50"]) == set(m["per_class"])
    assert not _has_nested_array(m) and not _has_nested_array(s)
    assert len(json.dumps(s)) < 2000


def test_serving_instances(trained: tuple) -> None:
    dataset, predictor, *_ = trained
    png = Path(dataset.examples[0]["image"]).read_bytes()
    b64 = base64.b64encode(png).decode()
    rows = predictor.parse_instances([{"b64": b64}, {"image": {"b64": b64}}])
    out = predictor.predict(rows)
    assert len(out) == 2 and out[0] == out[1]
    assert all(set(b) == {"name", "confidence", "bbox"} for b in out[0]["boxes"])
    with pytest.raises(ValueError, match="instance 1"):
        predictor.parse_instances([{"b64": b64}, {"b64": base64.b64encode(b"not an image").decode()}])
    with pytest.raises(ValueError, match="instance 0"):
        predictor.parse_instances([{"text": "hello"}])


def test_boxes_come_back_in_original_pixels(trained: tuple) -> None:
    _, predictor, *_ = trained
    img = np.zeros((64, 256), dtype=np.uint8)  # not the model's input size, not square
    dets = predictor.detect([{"array": img}], 0.0)[0]
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 64


def test_vertex_prediction_contract(trained: tuple) -> None:
    import threading

    from jobs import serving

    dataset, predictor, *_ = trained
    b64 = base64.b64encode(Path(dataset.examples[0]["image"]).read_bytes()).decode()
    server = serving.make_server(predictor, "127.0.0.1", serving.free_port())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/predict"
        reply = serving.predict(endpoint, [{"image": {"b64": b64}}])
        assert reply == {"predictions": predictor.predict(predictor.parse_instances([{"b64": b64}]))}
    finally:
        server.shutdown()
        server.server_close()
