"""FileLabelbox's prelabel-step methods: unlabeled_rows, import_prelabels, set_priorities
(`$LABELBOX_DIR/projects/<id>/{export.ndjson,prelabels/<name>.ndjson,priorities.json}`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lbtrain.adapters.labelbox import FileLabelbox

PROJECT = "proj-1"


def row(i: int, labeled: bool) -> dict[str, Any]:
    labels = [{"id": f"lab-{i}", "annotations": {"objects": [], "classifications": [], "relationships": []}}]
    return {"data_row": {"id": f"dr-{i}", "row_data": f"text {i}"}, "media_attributes": {"mime_type": "text/plain"},
            "projects": {PROJECT: {"name": "p", "labels": labels if labeled else []}}}


@pytest.fixture()
def lb(tmp_path: Path) -> FileLabelbox:
    d = tmp_path / "projects" / PROJECT
    d.mkdir(parents=True)
    rows = [row(0, False), row(1, True), row(2, False), row(3, True)]
    other = {"data_row": {"id": "dr-9"}, "projects": {"proj-other": {"labels": [{"id": "x"}]}}}  # no label here
    (d / "export.ndjson").write_text("\n".join(json.dumps(r) for r in [*rows, other]) + "\n\n", encoding="utf-8")
    return FileLabelbox(tmp_path)


def test_unlabeled_rows_are_streamed_without_their_projects(lb: FileLabelbox) -> None:
    rows = lb.unlabeled_rows(PROJECT)
    assert not isinstance(rows, list)
    assert [r["data_row"]["id"] for r in rows] == ["dr-0", "dr-2", "dr-9"]
    assert all("projects" not in r for r in lb.unlabeled_rows(PROJECT))
    assert next(lb.unlabeled_rows(PROJECT)) == {"data_row": {"id": "dr-0", "row_data": "text 0"},
                                                "media_attributes": {"mime_type": "text/plain"}}


def test_unlabeled_rows_of_a_missing_project_or_a_bad_line(lb: FileLabelbox, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="project 'proj-nope' not found"):
        list(lb.unlabeled_rows("proj-nope"))
    (tmp_path / "projects" / PROJECT / "export.ndjson").write_text('{"data_row": {}}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"export.ndjson:2: not JSON"):
        list(lb.unlabeled_rows(PROJECT))


def test_import_prelabels_is_kept_by_name_and_made_once(lb: FileLabelbox) -> None:
    rows = [{"uuid": "u1", "dataRow": {"id": "dr-0"}, "name": "sentiment", "answer": {"name": "positive"}}]
    lb.import_prelabels(PROJECT, "pl-r1", rows)
    lb.import_prelabels(PROJECT, "pl-r1", [{"uuid": "u2", "dataRow": {"id": "dr-2"}, "name": "x"}])  # a retry
    lb.import_prelabels(PROJECT, "pl-r2", [])
    assert lb.prelabels(PROJECT) == {"pl-r1": rows, "pl-r2": []}


def test_import_prelabels_refuses_a_missing_project_or_an_unsafe_name(lb: FileLabelbox) -> None:
    with pytest.raises(ValueError, match="project 'proj-nope' not found"):
        lb.import_prelabels("proj-nope", "pl", [])
    with pytest.raises(ValueError, match="not a safe identifier"):
        lb.import_prelabels(PROJECT, "../pl", [])
    assert lb.prelabels("proj-nope") == {}


def test_set_priorities_merges_and_the_last_one_counts(lb: FileLabelbox) -> None:
    assert lb.priorities(PROJECT) == {}
    lb.set_priorities(PROJECT, [("dr-0", 2), ("dr-2", 1)])
    lb.set_priorities(PROJECT, [("dr-0", 5), ("dr-9", 3), ("dr-9", 0)])
    assert lb.priorities(PROJECT) == {"dr-0": 5, "dr-2": 1, "dr-9": 0}
    with pytest.raises(ValueError, match="project 'proj-nope' not found"):
        lb.set_priorities("proj-nope", [("dr-0", 1)])
