"""lbtrain/progress.py: the progress.json a train job rewrites (throttled), its ETA, and the readers'
side (parse, the running step's file, the one-line description)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lbtrain import progress, storage


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def writer(tmp_path: Path, clock: Clock, interval: float = 5.0) -> progress.Writer:
    return progress.Writer(str(tmp_path), "train", interval=interval, clock=clock, wall=lambda: "2026-12-03T08:00:00Z")


def on_disk(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / progress.FILE).read_text())


def test_writes_at_most_every_interval_and_the_last_unit_at_once(tmp_path: Path):
    clock = Clock()
    w = writer(tmp_path, clock)
    w.update(unit="epoch", done=0, total=4, metric="accuracy")  # the first report is written at once
    assert w.writes == 1 and on_disk(tmp_path)["done"] == 0
    clock.t += 2
    w.update(unit="epoch", done=1, total=4, loss=0.9, metric="accuracy", value=0.5)
    clock.t += 2
    w.update(unit="epoch", done=2, total=4, loss=0.7, metric="accuracy", value=0.6)
    assert w.writes == 1 and on_disk(tmp_path)["done"] == 0  # 4 s since the last write: not yet
    clock.t += 1
    w.update(unit="epoch", done=3, total=4, loss=0.5, metric="accuracy", value=0.7)
    assert w.writes == 2
    doc = on_disk(tmp_path)
    assert doc["done"] == 3 and [p["done"] for p in doc["history"]] == [1, 2, 3]  # nothing skipped in between
    assert [p["value"] for p in doc["history"]] == [0.5, 0.6, 0.7]
    clock.t += 0.5
    w.update(unit="epoch", done=4, total=4, loss=0.4, metric="accuracy", value=0.8)
    assert w.writes == 3 and on_disk(tmp_path)["done"] == 4  # done == total: written at once
    w.flush()
    assert w.writes == 3  # nothing new to write


def test_flush_writes_what_the_throttle_held_back(tmp_path: Path):
    clock = Clock()
    w = writer(tmp_path, clock)
    w.update(unit="epoch", done=0, total=10)
    clock.t += 1
    w.update(unit="epoch", done=1, total=10, loss=2.5)
    assert on_disk(tmp_path)["done"] == 0
    w.flush()
    assert on_disk(tmp_path)["done"] == 1 and on_disk(tmp_path)["loss"] == 2.5


def test_eta_is_the_remaining_units_at_the_pace_so_far(tmp_path: Path):
    clock = Clock()
    w = writer(tmp_path, clock, interval=0)
    w.update(unit="epoch", done=0, total=5)
    assert w.snapshot()["eta_seconds"] is None  # no pace yet
    clock.t += 10
    w.update(unit="epoch", done=1, total=5)
    assert w.snapshot()["eta_seconds"] == 40.0 and w.snapshot()["elapsed_seconds"] == 10.0
    clock.t += 20
    w.update(unit="epoch", done=3, total=5)
    assert w.snapshot()["eta_seconds"] == 20.0  # 30 s for 3 epochs, 2 to go
    clock.t += 5
    w.update(unit="epoch", done=4, total=4, note="stopped early")  # the plan shrank: nothing left
    assert w.snapshot()["eta_seconds"] == 0.0


def test_eta_without_a_zero_report_starts_at_the_first_unit(tmp_path: Path):
    clock = Clock()
    w = writer(tmp_path, clock, interval=0)
    w.update(unit="fit", done=1, total=3)
    assert w.snapshot()["eta_seconds"] is None
    clock.t += 6
    w.update(unit="fit", done=2, total=3)
    assert w.snapshot()["eta_seconds"] == 6.0


def test_a_new_count_starts_a_new_history_and_pace(tmp_path: Path):
    clock = Clock()
    w = writer(tmp_path, clock, interval=0)
    for i in range(3):
        clock.t += 1
        w.update(unit="epoch", done=i + 1, total=3, loss=1.0 / (i + 1))
    clock.t += 1
    w.update(unit="fit", done=0, total=2)
    snap = w.snapshot()
    assert snap["unit"] == "fit" and snap["history"] == [] and snap["eta_seconds"] is None


def test_the_same_unit_reported_again_keeps_its_numbers(tmp_path: Path):
    w = writer(tmp_path, Clock(), interval=0)
    w.update(unit="epoch", done=2, total=5, loss=0.3, value=0.9)
    w.update(unit="epoch", done=2, total=2, note="stopped: budget used")
    assert w.snapshot()["history"] == [{"done": 2, "loss": 0.3, "value": 0.9}]


def test_history_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(progress, "HISTORY_LIMIT", 3)
    w = writer(tmp_path, Clock(), interval=0)
    for i in range(1, 6):
        w.update(unit="epoch", done=i, total=5, loss=float(i))
    assert [p["done"] for p in on_disk(tmp_path)["history"]] == [3, 4, 5]


def test_a_write_that_fails_never_fails_the_training(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    w = progress.Writer(str(blocker / "outputs"), "train", interval=0)
    w.update(unit="epoch", done=1, total=2, loss=float("nan"))  # NaN loss is not JSON either
    w.update(unit="epoch", done=2, total=2)
    w.flush()
    assert w.writes == 0
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1  # said once


def test_non_finite_numbers_become_null(tmp_path: Path):
    w = writer(tmp_path, Clock(), interval=0)
    w.update(unit="epoch", done=1, total=2, loss=float("inf"), value=float("nan"))
    doc = on_disk(tmp_path)
    assert doc["loss"] is None and doc["value"] is None


def test_report_goes_through_any_progress_callback() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    progress.report(lambda m, **f: seen.append((m, f)), "epoch 1/2", unit="epoch", done=1, total=2, loss=0.5,
                    metric="accuracy", value=0.8, extra={"seconds": 3.0})
    assert seen == [("epoch 1/2", {"seconds": 3.0, "iteration": {
        "unit": "epoch", "done": 1, "total": 2, "loss": 0.5, "metric": "accuracy", "value": 0.8, "note": ""}})]


def test_counter_reports_zero_then_each_unit() -> None:
    seen: list[dict[str, Any]] = []
    fits = progress.Counter(lambda m, **f: seen.append(f["iteration"]), "fit", 2, metric="macro_f1")
    fits.step("C=1", value=0.7, note="C=1")
    fits.step("refit", note="refit")
    assert [(s["done"], s["total"], s["value"]) for s in seen] == [(0, 2, None), (1, 2, 0.7), (2, 2, None)]
    assert all(s["metric"] == "macro_f1" for s in seen)


# -- reading -----------------------------------------------------------------------------------


def test_parse_rejects_what_is_not_a_progress_document() -> None:
    for bad in (None, [], {"version": 2, "done": 1, "total": 2}, {"version": 1, "done": "1", "total": 2},
                {"version": 1, "done": True, "total": 2}, {"version": 1, "done": 1, "total": -1}):
        assert progress.parse(bad) is None
    doc = progress.parse({"version": 1, "done": 1, "total": 2, "unit": "epoch", "loss": "x", "note": "n" * 999,
                          "history": [{"done": 1, "loss": "<b>"}, "junk", {"done": "2"}]})
    assert doc is not None and doc["loss"] is None and len(doc["note"]) == 200
    assert doc["history"] == [{"done": 1, "loss": None, "value": None}]


def test_of_running_step_reads_where_the_job_writes(tmp_path: Path):
    root = str(tmp_path / "artifacts")
    w = progress.Writer(storage.run_dir(root, "r1", "train", 2), "train", interval=0)
    w.update(unit="epoch", done=1, total=3, loss=0.5)
    run = {"run_id": "r1"}
    steps = [{"stage": "etl", "state": "SUCCEEDED", "attempt": 1},
             {"stage": "train", "state": "RUNNING", "attempt": 2}]
    found = progress.of_running_step(root, run, steps)
    assert found is not None and (found["stage"], found["attempt"], found["done"]) == ("train", 2, 1)
    assert progress.of_running_step(root, run, [{**steps[1], "attempt": 1}]) is None  # another attempt's
    assert progress.of_running_step(root, run, [{**steps[1], "state": "SUCCEEDED"}]) is None
    (Path(storage.run_dir(root, "r1", "train", 2)) / progress.FILE).write_text("{not json")
    assert progress.of_running_step(root, run, steps) is None


def test_describe_and_eta_text() -> None:
    p = {"stage": "train", "unit": "epoch", "done": 3, "total": 10, "loss": 0.41, "metric": "accuracy",
         "value": 0.93, "eta_seconds": 80.0, "note": ""}
    assert progress.describe(p) == "train: epoch 3/10 loss 0.41 val accuracy 0.93 ETA 1m20s"
    done = {**p, "done": 10, "loss": None, "note": "stopped early"}
    assert progress.describe(done) == "train: epoch 10/10 val accuracy 0.93 (stopped early)"
    assert [progress.fmt_eta(s) for s in (None, 4.4, 59.6, 61, 3725)] == ["", "4s", "1m00s", "1m01s", "1h02m"]


# -- the torch trainer ----------------------------------------------------------------------------


def test_cnn_fit_reports_every_epoch(tmp_path: Path):
    import numpy as np

    from jobs.tasks import cnn

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(24, 8, 8), dtype=np.uint8)
    y = np.arange(24) % 2
    w = progress.Writer(str(tmp_path), "train", interval=3600)  # throttled: only the first and last write

    def callback(message: str, **fields: Any) -> None:
        if "iteration" in fields:
            w.update(**fields["iteration"])

    def score(logits: Any, labels: Any) -> float:
        return float((logits.argmax(axis=1) == labels).mean())

    model = cnn.build(cnn.default_arch(8, 1, 2))
    fit = cnn.fit(model, x, y, x[:8], y[:8], loss="ce", score=score, progress=callback, metric="accuracy",
                  cfg=cnn.FitConfig(epochs=3, batch_size=8, patience=10, augment=False, threads=1, max_seconds=1e9))
    doc = on_disk(tmp_path)
    assert w.writes == 2
    assert (doc["unit"], doc["done"], doc["total"], doc["metric"]) == ("epoch", 3, 3, "accuracy")
    assert [p["done"] for p in doc["history"]] == [1, 2, 3]
    assert [p["loss"] for p in doc["history"]] == [h["loss"] for h in fit["history"]]
    assert [p["value"] for p in doc["history"]] == [h["validation_score"] for h in fit["history"]]
