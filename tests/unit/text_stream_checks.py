"""What the text tasks' streamed convert (convert_to, the etl job's one pass) must match: the files,
summary, rows and validation of convert over the same rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jobs.tasks.base import DatasetError, SnapshotRows, Task, write_dataset

SNAPSHOT_FILES = ("dataset.jsonl", "predict_only.jsonl", "label_map.json", "stats.json")


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def _validation(task: Task, dataset: Any, minimum: Mapping[str, int]) -> str | None:
    try:
        task.validate(dataset, minimum)
        return None
    except DatasetError as exc:
        return str(exc)


def assert_streams_like_convert(
    task: Task, rows: list[dict[str, Any]], model_run_id: str, params_list: Iterable[Mapping[str, Any]], tmp: Path
) -> None:
    for i, params in enumerate(params_list):
        a, b = tmp / f"listed-{i}", tmp / f"streamed-{i}"
        listed = task.convert(rows, model_run_id, params, str(a), _quiet)
        write_dataset(str(a), listed)
        streamed = task.convert_to(iter(rows), model_run_id, params, str(b), _quiet)  # type: ignore[attr-defined]
        assert isinstance(streamed.examples, SnapshotRows)
        write_dataset(str(b), streamed)
        for name in SNAPSHOT_FILES:
            assert (b / name).read_bytes() == (a / name).read_bytes(), (params, name)
        assert task.etl_summary(streamed) == task.etl_summary(listed)
        assert list(streamed.examples) == listed.examples
        assert list(streamed.predict_only) == listed.predict_only
        for minimum in ({}, {"train": 1, "validation": 1, "test": 1}, {"train": 1000}):
            assert _validation(task, streamed, minimum) == _validation(task, listed, minimum), (params, minimum)
