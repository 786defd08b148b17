"""The prelabel step's Labelbox calls with LABELBOX_BACKEND=sdk, at the HTTP wire: the real
`labelbox.Client` (7.x) against the local fake (tests/fakes/labelbox_server.py).

`unlabeled_rows`: the project's Export v2 rows still to label, streamed. `import_prelabels`: MAL
imports of the golden annotation-import rows (tests/data/prelabels/<model_type>.ndjson), made once
per name even when Labelbox's answer to the create is lost. `set_priorities`: one bulk call per
priority band, so a million data rows cost about a hundred calls. The query texts are compared
with tests/data/labelbox_sdk/<operation>.graphql like the other SDK tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain.adapters.labelbox import PredictionUploadError
from lbtrain.adapters.labelbox_sdk import LabelboxApiError, priority_bands
from tests.fakes.labelbox_server import FakeLabelbox
from tests.labelbox_sdk_helpers import sdk_adapter, served, text_project_rows

DATA = Path(__file__).resolve().parent.parent / "data"
GOLDEN_QUERIES = DATA / "labelbox_sdk"
PRELABELS = DATA / "prelabels"
PROJECT = "proj-prelabel"
N_ROWS = 40  # every 5th row has no label
# The operations only the prelabel step sends (the rest are shared with test_labelbox_sdk*.py).
PRELABEL_OPERATIONS = {"exportDataRowsInProjectPyApi", "createMALPredictionImportByFilePyApi",
                       "getModelAssistedLabelingPredictionImportPyApi", "createQueuePriorityUpdateTaskPyApi"}
MODEL_TYPES = sorted(p.stem for p in PRELABELS.glob("*.ndjson"))


def project_rows(project_id: str = PROJECT, n: int = N_ROWS) -> list[dict[str, Any]]:
    return text_project_rows(project_id, n)


def golden(model_type: str) -> list[dict[str, Any]]:
    text = (PRELABELS / f"{model_type}.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


@pytest.fixture()
def fake() -> Iterator[FakeLabelbox]:
    fake = FakeLabelbox()
    fake.add_project(PROJECT, project_rows())
    with served(fake):
        yield fake


adapter = sdk_adapter


# -- unlabeled_rows ------------------------------------------------------------------------------

def test_unlabeled_rows_are_the_projects_rows_without_a_label_streamed(fake: FakeLabelbox) -> None:
    # A labeled row Labelbox still shows in To Label (e.g. a label made outside the workflow) is
    # dropped by the adapter's own check.
    fake.projects[PROJECT].workflow["dr-001"] = "ToLabel"
    rows = adapter(fake).unlabeled_rows(PROJECT)
    assert not isinstance(rows, list)
    expected = [{k: v for k, v in r.items() if k != "projects"} for r in project_rows()
                if not r["projects"][PROJECT]["labels"]]
    first = next(rows)
    assert first == expected[0] and "projects" not in first
    assert [first, *rows] == expected and len(expected) == 8
    (export,) = fake.exports
    assert export["filters"]["projectId"] == PROJECT
    assert export["filters"]["searchQuery"]["query"] == [{"type": "task_queue_not_exist"}]  # workflow_status ToLabel
    params = export["params"]
    assert params["includeLabelDetails"] is False and params["includePerformanceDetails"] is False
    assert export["streamable"] is True
    # 9 rows (8 + the labeled one in To Label) in files of 3 lines: streamed from 3 export files
    assert fake.operations().count("GetExportFileFromOffsetPyApi") == 3 == fake.operations().count("GET files")


def test_a_fully_labeled_project_has_no_unlabeled_rows(fake: FakeLabelbox) -> None:
    fake.add_project("proj-done", [r for r in project_rows("proj-done") if r["projects"]["proj-done"]["labels"]])
    assert list(adapter(fake).unlabeled_rows("proj-done")) == []
    assert "GetExportFileFromOffsetPyApi" not in fake.operations()


def test_unlabeled_rows_of_an_unknown_project(fake: FakeLabelbox) -> None:
    with pytest.raises(LabelboxApiError, match="project 'proj-nope' not found"):
        list(adapter(fake).unlabeled_rows("proj-nope"))


# -- import_prelabels ------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_prelabels_reach_labelbox_exactly_as_the_golden_rows(fake: FakeLabelbox, model_type: str) -> None:
    rows = golden(model_type)
    name = f"lbtrain-prelabel-{model_type}"
    adapter(fake).import_prelabels(PROJECT, name, rows)
    assert fake.projects[PROJECT].imports == {name: rows}
    (upload,) = fake.mal_uploads
    assert upload["file_name"] == f"{PROJECT}__{name}.ndjson"


def test_the_golden_rows_cover_every_annotation_kind() -> None:
    kinds = {mt: {("answer-list" if isinstance(r.get("answer"), list) else "answer") if "answer" in r
                  else "bbox" if "bbox" in r else "location" for r in golden(mt)} for mt in MODEL_TYPES}
    assert set().union(*kinds.values()) == {"answer", "answer-list", "bbox", "location"}
    assert kinds["ner"] == {"location"} and kinds["bounding_box"] == {"bbox"}
    # NER offsets are inclusive: "Barack Obama" is characters 0..11 of "Barack Obama visited Paris"
    text = "Barack Obama visited Paris"
    assert [text[r["location"]["start"]: r["location"]["end"] + 1] for r in golden("ner")] == ["Barack Obama", "Paris"]
    for mt in MODEL_TYPES:
        for row in golden(mt):
            assert set(row["dataRow"]) == {"id"} and row["uuid"] and row["name"]


def test_the_golden_rows_pass_the_sdks_annotation_models() -> None:
    """labelbox 7.x validates annotation-import dicts only with its NDJSON pydantic models, which
    import the annotation types, which need opencv and shapely (the labelbox[data] extra, in `dev`)."""
    from labelbox.data.serialization.ndjson.classification import NDChecklist, NDRadio
    from labelbox.data.serialization.ndjson.objects import NDRectangle, NDTextEntity

    model = {"answer": NDRadio, "answer-list": NDChecklist, "bbox": NDRectangle, "location": NDTextEntity}
    for mt in MODEL_TYPES:
        for row in golden(mt):
            kind = ("answer-list" if isinstance(row.get("answer"), list) else "answer") if "answer" in row else (
                "bbox" if "bbox" in row else "location")
            model[kind].model_validate(row)


def test_the_sdks_own_row_check_runs_before_anything_is_sent(fake: FakeLabelbox) -> None:
    rows = golden("text_single_classification")
    bad = [rows[0], {**rows[1], "dataRow": {"id": "dr-t02", "globalKey": "t2"}}]
    with pytest.raises(LabelboxApiError, match="Must provide only one of 'id' or 'globalKey'"):
        adapter(fake).import_prelabels(PROJECT, "bad", bad)
    assert fake.projects[PROJECT].imports == {}
    assert "createMALPredictionImportByFilePyApi" not in fake.operations()


@pytest.mark.parametrize("not_found_error", [False, True], ids=["null", "RESOURCE_NOT_FOUND"])
@pytest.mark.parametrize("status", [503, 0], ids=["5xx", "dropped"])
def test_an_import_whose_answer_was_lost_is_made_once(fake: FakeLabelbox, status: int,
                                                      not_found_error: bool) -> None:
    fake.mal_not_found_error = not_found_error  # how Labelbox says "no import of that name"
    rows = golden("bounding_box")
    fake.fail("createMALPredictionImportByFilePyApi", status, after=True)  # made, then the answer is lost
    lb = adapter(fake)
    lb.import_prelabels(PROJECT, "pl-r1", rows)
    assert fake.projects[PROJECT].imports == {"pl-r1": rows}
    creates = fake.operations().count("createMALPredictionImportByFilePyApi")
    # 5xx: the SDK's own retry re-sends the create, which is refused (the name is taken) and the
    # adapter finds the import; dropped: the adapter's retry looks the name up first.
    assert creates == (2 if status == 503 else 1)
    lb.import_prelabels(PROJECT, "pl-r1", rows)  # a redelivered step
    assert fake.projects[PROJECT].imports == {"pl-r1": rows}
    assert fake.operations().count("createMALPredictionImportByFilePyApi") == creates
    assert len(fake.mal_uploads) == 1


def test_a_running_import_is_polled_until_finished(fake: FakeLabelbox) -> None:
    fake.projects[PROJECT].import_polls_running = 2
    adapter(fake).import_prelabels(PROJECT, "pl", golden("ner"))
    # one lookup before the create, then three refreshes (RUNNING, RUNNING, FINISHED)
    assert fake.operations().count("getModelAssistedLabelingPredictionImportPyApi") == 4


def test_rejected_prelabel_rows_raise_naming_them(fake: FakeLabelbox) -> None:
    fake.projects[PROJECT].reject_rows = {1: "Feature schema 'dog' not found in the ontology"}
    rows = golden("bounding_box") + golden("ner") + golden("text_single_classification")
    with pytest.raises(PredictionUploadError) as info:
        adapter(fake, batch_rows=2).import_prelabels(PROJECT, "pl", rows)
    err = info.value
    # batches of 2 rows, never splitting a data row: [b01 b01] [n01 n01] [t01 t02]; row 1 of each rejected
    assert (err.failed, err.total, err.uploads, err.kind) == (3, 6, ["pl", "pl-p2", "pl-p3"], "project")
    assert f"rejected 3 of 6 prediction rows for project {PROJECT!r}" in str(err)
    assert "data row dr-b01: Feature schema 'dog' not found" in str(err) and "data row dr-t02" in str(err)
    assert sorted(fake.projects[PROJECT].imports) == ["pl", "pl-p2", "pl-p3"]  # every batch was still tried


def test_a_data_rows_prelabels_stay_in_one_import(fake: FakeLabelbox) -> None:
    rows = golden("bounding_box") + golden("text_single_classification")  # dr-b01 has 2 rows
    adapter(fake, batch_rows=1).import_prelabels(PROJECT, "pl", rows)
    assert [[r["dataRow"]["id"] for r in v] for v in fake.projects[PROJECT].imports.values()] == [
        ["dr-b01", "dr-b01"], ["dr-t01"], ["dr-t02"]]


def test_no_prelabels_is_no_call(fake: FakeLabelbox) -> None:
    adapter(fake).import_prelabels(PROJECT, "pl", [])
    assert fake.requests == []


# -- set_priorities --------------------------------------------------------------------------------

def test_few_distinct_priorities_are_kept_exactly(fake: FakeLabelbox) -> None:
    priorities = [(f"dr-{i:03d}", i % 7) for i in range(40)] + [("dr-000", 9)]  # the last one counts
    adapter(fake, priority_batch_rows=4).set_priorities(PROJECT, priorities)
    expected = {**dict(priorities)}
    assert fake.projects[PROJECT].priorities == expected
    calls = [r.variables for r in fake.requests if r.operation == "createQueuePriorityUpdateTaskPyApi"]
    # one band per priority (0..6 and 9), each cut into calls of at most 4 data rows
    assert [c["priority"] for c in calls] == sorted(c["priority"] for c in calls)
    assert all(len(c["dataRowIdentifiers"]["ids"]) <= 4 and c["dataRowIdentifiers"]["idType"] == "ID"
               for c in calls)
    assert len(calls) == sum(-(-n // 4) for n in (5, 6, 6, 6, 6, 5, 5, 1))


def test_a_million_priorities_go_in_about_a_hundred_bulk_calls(fake: FakeLabelbox) -> None:
    n = 1_000_000
    ids = [f"cl{i:023d}" for i in range(n)]  # cuid-sized ids
    priorities = [(ids[i], i) for i in range(n)]
    started = time.monotonic()
    adapter(fake).set_priorities(PROJECT, priorities)
    elapsed = time.monotonic() - started
    calls = fake.operations().count("createQueuePriorityUpdateTaskPyApi")
    assert 100 <= calls <= 102  # 100 bands; the biggest ones cut at 100,000 data rows per call
    stored = fake.projects[PROJECT].priorities
    assert len(stored) == n
    assert [stored[ids[i]] for i in range(22)] == list(range(22))  # the top of the queue keeps its order
    sample = list(range(0, n, 997)) + [n - 1]
    values = [stored[ids[i]] for i in sample]
    assert values == sorted(values) and all(stored[ids[i]] <= i for i in sample)  # never ahead of a lower number
    assert len(set(stored.values())) == 100
    assert elapsed < 60, f"set_priorities of {n} rows took {elapsed:.1f}s"
    print(f"set_priorities: {n} rows, {calls} calls, {elapsed:.1f}s")


def test_a_failed_priority_task_is_a_clear_failure(fake: FakeLabelbox) -> None:
    fake.priority_task_status = "FAILED"
    with pytest.raises(LabelboxApiError, match=rf"priority 3 for 1 data rows of project {PROJECT} failed: "
                                               r".*Priority was not updated"):
        adapter(fake).set_priorities(PROJECT, [("dr-001", 3)])


def test_a_priority_out_of_int32_is_refused_before_any_call(fake: FakeLabelbox) -> None:
    with pytest.raises(ValueError, match="not a 32-bit integer"):
        adapter(fake).set_priorities(PROJECT, [("dr-001", 2**31)])
    assert fake.requests == []


def test_priority_bands() -> None:
    assert priority_bands([("a", 5), ("b", 1), ("c", 5)], 3) == [(1, ["b"]), (5, ["a", "c"])]
    rows = [(f"d{i}", i // 2) for i in range(10_000)]  # 5,000 distinct priorities, two rows each
    bands = priority_bands(rows, 50)
    assert len(bands) <= 50 and sum(len(ids) for _, ids in bands) == 10_000
    starts = [p for p, _ in bands]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert starts[:5] == [0, 1, 2, 3, 4] and bands[0][1] == ["d0", "d1"]  # equal priorities share a band
    position = {r: k for k, (_, ids) in enumerate(bands) for r in ids}
    assert all(position[f"d{i}"] <= position[f"d{i + 1}"] for i in range(9_999))  # order kept
    assert priority_bands([], 10) == []


# -- goldens -------------------------------------------------------------------------------------

def test_the_sdk_sends_the_recorded_prelabel_queries(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    list(lb.unlabeled_rows(PROJECT))
    fake.projects[PROJECT].import_polls_running = 1
    lb.import_prelabels(PROJECT, "pl", golden("ner"))
    lb.set_priorities(PROJECT, [("dr-000", 1), ("dr-005", 2)])
    seen = fake.queries()
    golden_texts = {p.stem: p.read_text(encoding="utf-8") for p in GOLDEN_QUERIES.glob("*.graphql")}
    assert PRELABEL_OPERATIONS <= set(seen) <= set(golden_texts)
    for operation, query in seen.items():
        assert query == golden_texts[operation], f"{operation}: the SDK's query text changed"
