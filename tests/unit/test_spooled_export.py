"""The ETL never holds the whole Labelbox export: rows are spooled to a local file as they stream in
and read back one at a time, as often as a task walks them."""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path

import pytest

from jobs.tasks import load
from jobs.tasks.exportv2 import SpooledRows, reiterable

DATA = Path(__file__).resolve().parents[1] / "data"


class Row(dict):
    """A dict that can be weakly referenced, to see which rows are still alive."""

    __slots__ = ("__weakref__",)


def test_rows_are_written_out_as_they_arrive_not_collected(tmp_path):
    alive: list[weakref.ref] = []
    most_alive = 0

    def stream():
        nonlocal most_alive
        for i in range(5000):
            row = Row(data_row={"id": f"dr{i}", "row_data": "x" * 200}, n=i)
            alive.append(weakref.ref(row))
            most_alive = max(most_alive, sum(1 for r in alive[-50:] if r() is not None))
            yield row

    rows = SpooledRows(stream(), directory=str(tmp_path))
    assert most_alive <= 2  # the row being written, and the one just yielded
    assert len(rows) == 5000
    first = [r["n"] for r in rows]
    second = [r["data_row"]["id"] for r in rows]  # a task may walk the rows again
    assert first == list(range(5000)) and second[-1] == "dr4999"
    path = rows.path
    assert os.path.exists(path)
    rows.close()
    assert not os.path.exists(path)


def test_a_failing_stream_leaves_no_file(tmp_path):
    def stream():
        yield {"data_row": {"id": "dr0"}}
        raise RuntimeError("export task failed")

    with pytest.raises(RuntimeError, match="export task failed"):
        SpooledRows(stream(), directory=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_tasks_convert_spooled_rows_as_they_convert_a_list(tmp_path):
    lines = (DATA / "export_text_single.ndjson").read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028
    rows = [json.loads(line) for line in lines if line.strip()]
    task = load("text_single_classification")
    quiet = lambda *a, **k: None  # noqa: E731
    from_list = task.convert(rows, "mr-golden", {}, str(tmp_path / "a"), quiet)
    with SpooledRows(iter(rows), directory=str(tmp_path)) as spooled:
        assert reiterable(spooled) is spooled
        from_spool = task.convert(spooled, "mr-golden", {}, str(tmp_path / "b"), quiet)
    assert from_spool.examples == from_list.examples and from_spool.stats == from_list.stats
    assert from_spool.predict_only == from_list.predict_only
    assert reiterable(iter(rows)) == rows  # a one-shot iterator is collected
