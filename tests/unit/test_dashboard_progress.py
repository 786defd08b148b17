"""The run page shows the running step's progress.json (lbtrain/progress.py): "epoch k/n … ETA" and an
inline SVG chart of loss and validation metric, escaped, refreshed by the page's existing poll, and
gone once the run has ended. Flask test client, a dict-backed store, no emulators."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lbtrain import progress, storage
from lbtrain.api import dashview as v
from lbtrain.api.apps import dashboard_app
from lbtrain.config import Config
from lbtrain.deps import Deps

EVIL = '<script>alert("x")</script>'
AT = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


class Store:
    def __init__(self, run: dict[str, Any], steps: list[dict[str, Any]]):
        self.run, self.steps = run, steps

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.run)

    def get_steps(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(s) for s in self.steps]


@pytest.fixture
def page(tmp_path: Path):
    run = {"run_id": "r1", "status": "RUNNING", "stage": "train", "model_type": "image_single_classification",
           "model_run_id": "mr1", "created_at": AT, "updated_at": AT,
           "labelbox_statuses": [{"at": AT, "status": "TRAINING_MODEL"}]}
    steps = [{"stage": "etl", "index": 0, "state": "SUCCEEDED", "attempt": 1, "started_at": AT, "ended_at": AT},
             {"stage": "train", "index": 1, "state": "RUNNING", "attempt": 1, "started_at": AT}]
    store = Store(run, steps)
    deps = Deps(Config(artifact_root=str(tmp_path)))
    deps.__dict__["store"] = store
    writer = progress.Writer(storage.run_dir(str(tmp_path), "r1", "train", 1), "train", interval=0)
    return dashboard_app(deps).test_client(), store, writer


def test_the_running_step_shows_its_progress_and_chart(page):
    client, _, writer = page
    assert 'id="run-progress"' not in client.get("/dashboard/runs/r1").get_data(as_text=True)  # nothing yet
    writer.update(unit="epoch", done=0, total=5, metric="accuracy")
    html = client.get("/dashboard/runs/r1").get_data(as_text=True)
    assert "train: epoch 0/5" in html and "progress-chart" not in html  # no point to draw yet
    for epoch, (loss, acc) in enumerate([(2.0, 0.4), (1.0, 0.7), (0.5, 0.9)], start=1):
        writer.update(unit="epoch", done=epoch, total=5, loss=loss, metric="accuracy", value=acc)
    html = client.get("/dashboard/runs/r1").get_data(as_text=True)
    section = html[html.index('id="run-progress"'):html.index('id="h-stages"')]
    assert "train: epoch 3/5 loss 0.5 val accuracy 0.9" in section
    assert '<progress max="5" value="3">' in section
    assert section.count('<circle class="loss"') == 3 and section.count('<circle class="value"') == 3
    assert re.findall(r'class="value"[^>]*data-value="([\d.]+)"', section) == ["0.4", "0.7", "0.9"]


def test_the_live_poll_carries_the_progress(page):
    client, _, writer = page
    writer.update(unit="epoch", done=1, total=4, loss=1.0, metric="accuracy", value=0.5)
    first = client.get("/dashboard/api/runs/r1").json
    writer.update(unit="epoch", done=2, total=4, loss=0.8, metric="accuracy", value=0.6)
    second = client.get("/dashboard/api/runs/r1").json
    assert "epoch 1/4" in first["html"] and "epoch 2/4" in second["html"]
    assert first["version"] != second["version"]  # the page swaps the live part in


def test_reported_text_is_escaped(page):
    client, _, writer = page
    writer.update(unit=EVIL, done=1, total=2, loss=0.3, metric=EVIL, value=0.5, note=EVIL)
    html = client.get("/dashboard/runs/r1").get_data(as_text=True)
    assert EVIL not in html and "&lt;script&gt;" in html
    assert "progress-chart" in html


def test_an_ended_run_shows_no_progress(page):
    client, store, writer = page
    writer.update(unit="epoch", done=1, total=2, loss=0.3)
    store.run["status"] = "SUCCEEDED"
    store.steps[1]["state"] = "SUCCEEDED"
    assert 'id="run-progress"' not in client.get("/dashboard/runs/r1").get_data(as_text=True)


def test_svg_progress_scales_both_series():
    svg = str(v.svg_progress([{"done": 1, "loss": 4.0, "value": 0.5}, {"done": 2, "loss": 2.0, "value": None}],
                             total=3, unit="epoch", metric="map50"))
    assert svg.count("<polyline") == 1  # loss has two points; the metric one
    ys = [float(y) for y in re.findall(r'<circle class="loss" cx="[\d.]+" cy="([\d.]+)"', svg)]
    assert ys[0] < ys[1]  # the larger loss is drawn higher
    xs = [float(x) for x in re.findall(r'<circle class="loss" cx="([\d.]+)"', svg)]
    assert xs[0] == 48.0 and xs[1] < 640 - 48  # x runs to the planned total (3), not to the last point
    assert "validation map50" in svg and "epoch 3" in svg


def test_the_train_step_shows_its_device_and_resume(page):
    client, store, _ = page
    assert 'id="train-device"' not in client.get("/dashboard/runs/r1").get_data(as_text=True)
    store.steps[1] = {**store.steps[1], "state": "SUCCEEDED", "attempt": 2, "metrics": {
        "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "device_count": 2, "device_memory_gb": 79.1,
        "device_precision": "bf16", "processes": 2, "resumed_from_attempt": 1, "resumed_from_epoch": 7}}
    html = client.get("/dashboard/runs/r1").get_data(as_text=True)
    line = html[html.index('id="train-device"'):]
    line = re.sub(r"<[^>]+>", "", line[line.index(">") + 1:line.index("</p>")])
    assert line == ("Trained on cuda (NVIDIA H100 80GB HBM3), 2 GPU(s), 79.1 GiB each, bf16, 2 data-parallel "
                    "processes; resumed from attempt 1's checkpoint after epoch 7.")
