"""Reference datasets written as file-backed Labelbox model runs (lbtrain.datasets)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from jobs.tasks import exportv2
from lbtrain import datasets
from lbtrain.adapters.labelbox import FileLabelbox
from lbtrain.datasets import text_classes

MT = "text_single_classification"


def test_available() -> None:
    avail = datasets.available()
    assert avail[MT][0] == "rotten_tomatoes"
    assert set(avail[MT]) >= {"rotten_tomatoes", "presidential_debates"}


def test_build_small_rotten_tomatoes(tmp_path: Path) -> None:
    summary = datasets.build(MT, str(tmp_path), "mr-1", limit=300, model_id="model-x")
    assert summary["rows"] == 300 and summary["classes"] == ["fresh", "plot", "rotten"]
    assert summary["question"] == "category"
    rows = list(FileLabelbox(tmp_path).export_rows("mr-1"))
    assert len(rows) == 300
    splits = {"training": 0, "validation": 0, "test": 0}
    ids = set()
    for row in rows:
        dr = row["data_row"]
        assert re.fullmatch(r"c[0-9a-z]{24}", dr["id"]) and dr["global_key"].startswith("rotten_tomatoes-")
        assert row["media_attributes"]["mime_type"] == "text/plain"
        run = row["experiments"]["model-x"]["runs"]["mr-1"]
        splits[run["split"]] += 1
        (label,) = run["labels"]
        (radio,) = label["annotations"]["classifications"]
        assert radio["name"] == "category" and radio["radio_answer"]["name"] in summary["classes"]
        assert label["annotations"]["objects"] == [] and run["predictions"] == []
        ids.add(dr["id"])
    assert len(ids) == 300
    assert splits == {"training": 210, "validation": 45, "test": 45}
    # stratified: every class is in every split, roughly in its overall proportion
    for cls, per_split in summary["per_class"].items():
        assert all(n >= 1 for n in per_split.values()), cls
    assert summary["per_class"]["plot"]["train"] >= 10  # the rare class (~8%) survives the subset


def test_build_is_deterministic(tmp_path: Path) -> None:
    datasets.build(MT, str(tmp_path / "a"), "mr", limit=120, seed=3)
    datasets.build(MT, str(tmp_path / "b"), "mr", limit=120, seed=3)
    a = (tmp_path / "a" / "model_runs" / "mr" / "export.ndjson").read_bytes()
    assert a == (tmp_path / "b" / "model_runs" / "mr" / "export.ndjson").read_bytes()
    datasets.build(MT, str(tmp_path / "c"), "mr", limit=120, seed=4)
    assert a != (tmp_path / "c" / "model_runs" / "mr" / "export.ndjson").read_bytes()


def test_rows_parse_with_the_job_code(tmp_path: Path) -> None:
    datasets.build(MT, str(tmp_path), "mr-2", limit=60, dataset="presidential_debates")
    rows = list(FileLabelbox(tmp_path).export_rows("mr-2"))
    assert exportv2.first_radio_question(rows, "mr-2") == "party"
    run = exportv2.find_run(rows[0], "mr-2")
    assert exportv2.parse_split(run["split"])[0] in ("train", "validation", "test")
    assert exportv2.radio_answers(run, "party")[0] in ("democratic", "moderator", "republican")


def test_quotas_keep_small_classes_and_the_total() -> None:
    q = text_classes._quotas({"big": 7000, "mid": 5000, "tiny": 50}, 100)
    assert sum(q.values()) == 100 and q["tiny"] == 10
    assert text_classes._quotas({"a": 5, "b": 6}, 100) == {"a": 5, "b": 6}
    with pytest.raises(ValueError, match="too small"):
        text_classes._quotas({"a": 50, "b": 50}, 4)


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(datasets.NoBuilder, match="no reference dataset builder for model type 'no_such_type'"):
        datasets.build("no_such_type", str(tmp_path), "mr")
    with pytest.raises(datasets.NoBuilder, match="unknown dataset 'imdb'"):
        datasets.build(MT, str(tmp_path), "mr", dataset="imdb")
    with pytest.raises(ValueError, match="not a safe identifier"):
        datasets.build(MT, str(tmp_path), "../escape", limit=30)


def test_importing_lbtrain_datasets_is_light() -> None:
    import subprocess

    code = "import lbtrain.datasets, jobs.serving, jobs.main, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", "import json;" + code], capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"pandas", "numpy", "sklearn", "joblib", "scipy"}
