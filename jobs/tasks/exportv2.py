"""Reading Labelbox Export v2 rows (docs/architecture.md §11): the parts every task shares.

Pure functions over dicts: where the model run sits in a row, its split, its labels, and
fetching text that `row_data` points to (through lbtrain.fetch: row_data is untrusted). Stdlib only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from jobs.tasks.base import DatasetError
from lbtrain import fetch
from lbtrain.fetch import FetchError

# Labelbox writes "training"/"validation"/"test" (SDK enum TRAINING|VALIDATION|TEST|UNASSIGNED);
# people and older exports use the short forms.
_SPLIT_ALIASES = {
    "training": "train",
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
    "testing": "test",
}

URL_SCHEMES = ("http://", "https://", "file://")
SPOOL_PROGRESS_EVERY = 10_000
MAX_NAMED_IDS = 20


class RowRef(NamedTuple):
    """Where one export row's data and model-run entry are (a tuple: built for every row, ~3x
    cheaper than a frozen dataclass)."""

    data_row_id: str
    global_key: str | None
    row_data: Any
    run: Mapping[str, Any] | None  # experiments[*].runs[model_run_id], None if absent


def row_ref(row: Mapping[str, Any], model_run_id: str) -> RowRef:
    data_row = row.get("data_row") or {}
    data_row_id = data_row.get("id") or ""
    return RowRef(  # data_row_id, global_key, row_data, run (positional: this runs for every row)
        data_row_id if type(data_row_id) is str else str(data_row_id),
        data_row.get("global_key") or None,
        data_row.get("row_data"),
        find_run(row, model_run_id),
    )


def find_run(row: Mapping[str, Any], model_run_id: str) -> Mapping[str, Any] | None:
    """experiments[<any model id>].runs[model_run_id] of an Export v2 row."""
    experiments = row.get("experiments") or {}
    if not (type(experiments) is dict or isinstance(experiments, Mapping)):  # type(): skips the slow ABC check
        return None
    for experiment in experiments.values():
        runs = (experiment or {}).get("runs") or {}
        if (type(runs) is dict or isinstance(runs, Mapping)) and model_run_id in runs:
            return runs[model_run_id] or {}
    return None


def require_rows_in_run(rows: Rows, model_run_id: str) -> None:
    """Every converter's first check: the export has rows, and some belong to this model run."""
    if not rows:
        raise DatasetError(f"model run {model_run_id!r} has no data rows in its export")
    if not any(find_run(r, model_run_id) is not None for r in rows):
        raise DatasetError(f"none of the {len(rows)} exported data rows belongs to model run {model_run_id!r}")


_SPLIT_CACHE: dict[str, tuple[str | None, str | None]] = {}  # parse_split of the few split strings an export has
_SPLIT_CACHE_MAX = 64


def parse_split(value: Any) -> tuple[str | None, str | None]:
    """→ (split, None) or (None, skip reason). Case-insensitive; missing means unassigned."""
    if type(value) is str:
        cached = _SPLIT_CACHE.get(value)
        if cached is not None:
            return cached
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "no_split"
    text = str(value).strip().lower()
    if text == "unassigned":
        out: tuple[str | None, str | None] = (None, "unassigned_split")
    else:
        split = _SPLIT_ALIASES.get(text)
        out = (split, None) if split else (None, "unknown_split")
    if type(value) is str and len(_SPLIT_CACHE) < _SPLIT_CACHE_MAX:
        _SPLIT_CACHE[value] = out
    return out


def run_labels(run: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    labels = (run or {}).get("labels") or []
    if type(labels) is list and len(labels) == 1 and type(labels[0]) is dict:
        return [labels[0]]  # the common case, without the filtering comprehension
    return [label for label in labels if type(label) is dict or isinstance(label, Mapping)]


def classifications(label: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = (label.get("annotations") or {}).get("classifications") or []
    return [c for c in items if type(c) is dict or isinstance(c, Mapping)]


def first_radio_question(rows: Rows, model_run_id: str) -> str | None:
    """Name of the first radio question answered in the model run (export order)."""
    for row in rows:
        question = first_radio_question_of_run(find_run(row, model_run_id))
        if question is not None:
            return question
    return None


def first_radio_question_of_run(run: Mapping[str, Any] | None) -> str | None:
    """Name of the first radio question answered in one row's run (label order)."""
    for label in run_labels(run):
        for c in classifications(label):
            answer = c.get("radio_answer")
            if (type(answer) is dict or isinstance(answer, Mapping)) and c.get("name"):
                return str(c["name"])
    return None


def radio_answers(run: Mapping[str, Any] | None, question: str) -> list[str]:
    """The answers to `question` in each label of the run (one per label that answers it)."""
    return radio_answers_of_labels(run_labels(run), question)


def radio_answers_of_labels(labels: Iterable[Mapping[str, Any]], question: str) -> list[str]:
    """radio_answers of a run whose labels (run_labels) are at hand."""
    out = []
    for label in labels:
        for c in classifications(label):
            if c.get("name") != question:  # `name` first: most classifications answer another question
                continue
            answer = c.get("radio_answer")
            if (type(answer) is dict or isinstance(answer, Mapping)) and answer.get("name"):
                out.append(str(answer["name"]))
                break
    return out


def is_url(value: str) -> bool:
    """row_data that is a single URL (text rows may also carry the text inline)."""
    v = value.strip()
    # the longest scheme is 8 characters: lower-casing only those keeps this O(1) for inline texts
    return v[:8].lower().startswith(URL_SCHEMES) and not any(ch.isspace() for ch in v)


def fetch_text(
    url: str,
    *,
    timeout: float | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    policy: fetch.FetchPolicy | None = None,
) -> str:
    """The text a row_data URL names, under the fetch policy (the process's by default; `timeout`
    replaces its overall deadline per attempt), retrying transient errors `retries` times. Raises
    FetchError; a refused URL, body over the text limit or charset off the allowlist is Refused."""
    policy = policy or fetch.current()
    if timeout is not None:
        policy = policy.with_overrides(deadline_seconds=timeout)
    got = fetch.fetch_retrying(url, limit=policy.max_text_bytes, policy=policy, retries=retries, backoff=backoff)
    return fetch.decode_text(got)


def resolve_texts(values: Sequence[Any], *, workers: int = 8, **fetch_kw: Any) -> list[str | FetchError]:
    """row_data values → texts, fetching URLs in a small thread pool (order preserved); a URL that
    could not be fetched is its FetchError (`.reason` is the skip reason)."""
    out: list[str | FetchError] = [v if isinstance(v, str) else "" for v in values]
    todo = [i for i, v in enumerate(values) if isinstance(v, str) and is_url(v)]
    if not todo:
        return out
    fetch_kw.setdefault("policy", fetch.current())

    def one(i: int) -> tuple[int, str | FetchError]:
        try:
            return i, fetch_text(str(values[i]).strip(), **fetch_kw)
        except FetchError as exc:
            return i, exc

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
        for i, result in pool.map(one, todo):
            out[i] = result
    return out


class SkipLog:
    """Counts skipped rows per reason and names the first few, for stats.json."""

    def __init__(self, cap: int = MAX_NAMED_IDS):
        self.cap = cap
        self.reasons: dict[str, dict[str, Any]] = {}

    def add(self, reason: str, data_row_id: str) -> None:
        entry = self.reasons.get(reason)
        if entry is None:
            entry = self.reasons[reason] = {"count": 0, "data_row_ids": []}
        entry["count"] += 1
        if len(entry["data_row_ids"]) < self.cap:
            entry["data_row_ids"].append(data_row_id)

    def total(self) -> int:
        return sum(e["count"] for e in self.reasons.values())

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {k: self.reasons[k] for k in sorted(self.reasons)}


class SpooledRows:
    """The export, as a file of rows read back one at a time: tasks may walk it several times
    (find the question, then convert) without the whole export ever being in memory.

    Rows from the Labelbox stream are written to a local temporary NDJSON file as they arrive;
    each iteration reads the file line by line. `close()` (or the context manager) removes it.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]], progress: Callable[..., None] | None = None,
                 directory: str | None = None):
        fd, self.path = tempfile.mkstemp(prefix="lbtrain-export-", suffix=".ndjson", dir=directory)
        self.count = 0
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
                for row in rows:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    self.count += 1
                    if progress is not None and self.count % SPOOL_PROGRESS_EVERY == 0:
                        progress(f"exported {self.count} rows so far", rows=self.count)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, encoding="utf-8", newline="\n") as fh:
            for line in fh:
                yield json.loads(line)

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> SpooledRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What a task's convert walks: export rows it may iterate more than once and count.
Rows = Sequence[Mapping[str, Any]] | SpooledRows


def reiterable(rows: Iterable[Mapping[str, Any]]) -> Rows:
    """Rows that can be walked more than once and counted: a list or SpooledRows as they are,
    anything else (a one-shot iterator) collected into a list."""
    if isinstance(rows, SpooledRows | list | tuple):
        return rows
    return list(rows)
