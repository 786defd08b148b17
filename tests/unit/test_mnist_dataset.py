"""MNIST reference datasets (lbtrain.datasets.mnist): Export v2 rows with file:// PNGs, splits,
determinism, and the canvases shared with the bounding-box builder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lbtrain import datasets
from lbtrain.adapters.labelbox import FileLabelbox
from lbtrain.datasets import mnist
from lbtrain.storage import local_path


def test_available() -> None:
    avail = datasets.available()
    assert avail["image_single_classification"] == ["mnist_5k"]
    assert avail["image_multi_classification"] == ["mnist_canvases"]


def test_source_digits_split_disjoint_and_stratified() -> None:
    splits = mnist.digit_splits(0)
    sets = {s: set(v) for s, v in splits.items()}
    assert {s: len(v) for s, v in sets.items()} == {"train": 3500, "validation": 750, "test": 750}
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["validation"])
    _, labels = mnist.load_mnist()
    assert sorted(int(labels[i]) for i in splits["test"]).count(7) == 75


def test_build_single(tmp_path: Path) -> None:
    summary = mnist.build("image_single_classification", str(tmp_path), "mr-1", limit=100, model_id="mx")
    assert summary["rows"] == 100 and summary["classes"] == [str(d) for d in range(10)]
    assert summary["per_split"] == {"train": 70, "validation": 15, "test": 15}
    rows = list(FileLabelbox(tmp_path).export_rows("mr-1"))
    assert len({r["data_row"]["id"] for r in rows}) == 100
    for row in rows:
        dr = row["data_row"]
        assert re.fullmatch(r"c[0-9a-z]{24}", dr["id"]) and dr["row_data"].startswith("file:///")
        assert local_path(dr["row_data"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert row["media_attributes"] == {"height": 28, "width": 28, "mime_type": "image/png"}
        run = row["experiments"]["mx"]["runs"]["mr-1"]
        (radio,) = run["labels"][0]["annotations"]["classifications"]
        assert radio["name"] == "digit" and radio["radio_answer"]["name"] in summary["classes"]
    for cls, per_split in summary["per_class"].items():
        assert all(n >= 1 for n in per_split.values()), cls


def test_build_multi_and_determinism(tmp_path: Path) -> None:
    a = mnist.build("image_multi_classification", str(tmp_path / "a"), "mr", limit=40)
    mnist.build("image_multi_classification", str(tmp_path / "b"), "mr", limit=40)
    assert a["per_split"] == {"train": 28, "validation": 6, "test": 6} and a["question"] == "digits"
    export_a = (tmp_path / "a" / "model_runs" / "mr" / "export.ndjson").read_text()
    export_b = (tmp_path / "b" / "model_runs" / "mr" / "export.ndjson").read_text()
    assert export_a == export_b.replace(str(tmp_path / "b"), str(tmp_path / "a"))
    row = json.loads(export_a.splitlines()[0])
    assert row["media_attributes"] == {"height": 64, "width": 64, "mime_type": "image/png"}
    (checklist,) = row["experiments"][a["model_id"]]["runs"]["mr"]["labels"][0]["annotations"]["classifications"]
    answers = [x["name"] for x in checklist["checklist_answers"]]
    assert checklist["name"] == "digits" and 1 <= len(answers) <= 3 and answers == sorted(set(answers))


def test_make_canvases() -> None:
    canvases = mnist.make_canvases(30, 64, seed=1, source_split="test")
    assert canvases[0][0].shape == (64, 64) and str(canvases[0][0].dtype) == "uint8"
    for image, boxes in canvases:
        assert 1 <= len(boxes) <= 3
        for digit, x0, y0, x1, y1 in boxes:
            assert 0 <= digit <= 9 and 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert image[y0:y1, x0:x1].max() > 0
        for i, a in enumerate(boxes):  # tight boxes never overlap
            for b in boxes[i + 1 :]:
                assert a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
    again = mnist.make_canvases(30, 64, seed=1, source_split="test")
    assert all((x[0] == y[0]).all() and x[1] == y[1] for x, y in zip(canvases, again, strict=True))
    big = mnist.make_canvases(3, 128, seed=0, source_split="train", scale=(1.0, 2.0))
    assert big[0][0].shape == (128, 128)
    with pytest.raises(ValueError, match="source_split"):
        mnist.make_canvases(1, 64, source_split="holdout")
