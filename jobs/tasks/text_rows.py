"""Text data rows of an Export v2 model run, shared by the text tasks:
rows outside the run, without an id, duplicated, unfetchable or empty are logged, never dropped
silently; the rest come back with their (inline or fetched) text, split and labels.

The text tasks convert in one streaming pass (StreamingTextTask): the export is walked once, each
dataset / predict-only row is handed on as it is made (written to the snapshot files by the etl job)
and only counters, the skip logs and the compact set of data-row ids seen so far are kept.
"""

from __future__ import annotations

import gc
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from jobs.tasks import exportv2
from jobs.tasks.base import (
    SPLITS,
    Dataset,
    DatasetError,
    Progress,
    SnapshotRows,
    Task,
    dataset_uris,
    dumps_row,
)
from lbtrain import storage


class TextRow(NamedTuple):
    """A usable text row of the model run (a tuple: one is built per row)."""

    ref: exportv2.RowRef
    text: str
    split: str | None  # None when unusable; `split_reason` says why
    split_reason: str | None
    labels: list[Mapping[str, Any]]

    def base(self) -> dict[str, Any]:
        """The dataset-row fields every text example has."""
        row: dict[str, Any] = {"data_row_id": self.ref.data_row_id, "text": self.text}
        if self.ref.global_key:
            row["global_key"] = self.ref.global_key
        row["split"] = self.split or "unassigned"
        return row


URL_CHUNK = 256  # rows read ahead of the ones handed on, so their URLs are fetched together
PROGRESS_EVERY = 100_000  # a progress line per this many rows handed on
RECENT_IDS = 1 << 16  # data-row ids SeenIds keeps exactly before folding them into its compact keys


@dataclass
class StreamCounts:
    """What stream_text_rows saw, filled in as it goes: export rows, rows of the model run, URLs fetched."""

    rows: int = 0
    in_run: int = 0
    urls: int = 0


class SeenIds:
    """The data-row ids seen so far, for telling duplicates apart, in ~16 bytes per id instead of the
    ~90 a dict of the id strings takes (what kept a million-row ETL's memory growing with the rows).

    The latest `recent_max` ids are kept exactly (a dict); older ones as a 128-bit key, two independent
    64-bit SipHash values of the id (`hash(id)`, `hash(id + "\\x00")`, keyed per process), in two sorted
    numpy arrays. Two distinct ids are taken for one only if both hashes collide (~2^-128 per pair;
    ~10^-27 for a million ids), so no distinct row is dropped as a duplicate in practice. numpy (a jobs
    dependency) is imported only once there are more than `recent_max` ids.
    """

    def __init__(self, recent_max: int | None = None):
        self.recent_max = recent_max or RECENT_IDS
        self.recent: dict[str, None] = {}  # a dict, not a set: the garbage collector untracks it
        self.hi: Any = None  # sorted by hi; lo alongside
        self.lo: Any = None

    def __len__(self) -> int:
        return len(self.recent) + (0 if self.hi is None else len(self.hi))

    def first_seen(self, ids: Sequence[str]) -> list[bool]:
        """For each id in order, whether this is its first occurrence (earlier calls included); all
        of them are then seen."""
        older = self._in_older(ids) if self.hi is not None and len(self.hi) else None
        recent = self.recent
        out = []
        for i, key in enumerate(ids):
            if key in recent or (older is not None and older[i]):
                out.append(False)
            else:
                recent[key] = None
                out.append(True)
        if len(recent) >= self.recent_max:
            self._flush()
        return out

    @staticmethod
    def _keys(ids: Iterable[str], n: int) -> tuple[Any, Any]:
        import numpy as np

        hi = np.fromiter((hash(k) for k in ids), dtype=np.int64, count=n)
        lo = np.fromiter((hash(k + "\x00") for k in ids), dtype=np.int64, count=n)
        return hi, lo

    def _in_older(self, ids: Sequence[str]) -> list[bool]:
        import numpy as np

        hi, lo = self._keys(ids, len(ids))
        pos = np.searchsorted(self.hi, hi)
        at = np.minimum(pos, len(self.hi) - 1)
        same_hi = self.hi[at] == hi
        hit = same_hi & (self.lo[at] == lo)
        out: list[bool] = hit.tolist()
        # the first entry with an equal hi did not match lo: later entries may share that hi
        for i in np.flatnonzero(same_hi & ~hit).tolist():
            j = int(pos[i]) + 1
            while j < len(self.hi) and self.hi[j] == hi[i] and not out[i]:
                out[i] = bool(self.lo[j] == lo[i])
                j += 1
        return out

    def _flush(self) -> None:
        import numpy as np

        hi, lo = self._keys(self.recent, len(self.recent))
        order = np.argsort(hi, kind="stable")
        hi, lo = hi[order], lo[order]
        if self.hi is None:
            self.hi, self.lo = hi, lo
        else:
            at = np.searchsorted(self.hi, hi)
            self.hi = np.insert(self.hi, at, hi)  # one array at a time: the old one is freed first
            self.lo = np.insert(self.lo, at, lo)
        self.recent = {}


def stream_text_rows(
    rows: Iterable[Mapping[str, Any]],
    model_run_id: str,
    skipped: exportv2.SkipLog,
    progress: Progress,
    counts: StreamCounts,
    *,
    on_ref: Callable[[exportv2.RowRef], None] | None = None,
    chunk: int | None = None,
) -> Iterator[TextRow]:
    """The usable text rows of the model run, one pass over `rows` in export order, without holding
    more than `chunk` rows: rows are read `chunk` at a time and the URLs among them fetched together
    (exportv2.resolve_texts). `on_ref` sees every export row's RowRef as it is read, before any
    TextRow of its chunk is handed on. `counts` is complete once the generator is exhausted."""
    chunk = chunk or URL_CHUNK
    seen = SeenIds()
    batch: list[exportv2.RowRef] = []
    row_ref = exportv2.row_ref
    for row in rows:
        counts.rows += 1
        ref = row_ref(row, model_run_id)
        if on_ref is not None:
            on_ref(ref)
        if ref.run is None:
            skipped.add("not_in_model_run", ref.data_row_id)
            continue
        batch.append(ref)
        if len(batch) >= chunk:
            yield from _usable(batch, skipped, progress, counts, seen)
            batch = []
    if batch:
        yield from _usable(batch, skipped, progress, counts, seen)


def _usable(
    batch: list[exportv2.RowRef], skipped: exportv2.SkipLog, progress: Progress, counts: StreamCounts,
    seen: SeenIds,
) -> Iterator[TextRow]:
    counts.in_run += len(batch)
    is_url = exportv2.is_url
    n_urls = sum(1 for ref in batch if isinstance(ref.row_data, str) and is_url(ref.row_data))
    if n_urls:
        counts.urls += n_urls
        progress(f"fetching {n_urls} text row(s) by URL ({counts.urls} so far)", urls=counts.urls)
        texts: Sequence[Any] = exportv2.resolve_texts([ref.row_data for ref in batch])
    else:
        texts = [v if isinstance(v, str) else "" for v in (ref.row_data for ref in batch)]
    with_id = [ref.data_row_id for ref in batch if ref.data_row_id]
    first = iter(seen.first_seen(with_id))
    parse_split, run_labels = exportv2.parse_split, exportv2.run_labels
    for ref, text in zip(batch, texts, strict=True):
        if not ref.data_row_id:
            skipped.add("no_data_row_id", ref.global_key or "?")
            continue
        if not next(first):
            skipped.add("duplicate_data_row", ref.data_row_id)
            continue
        if isinstance(text, exportv2.FetchError):
            skipped.add(text.reason, ref.data_row_id)
            continue
        if not text.strip():
            skipped.add("no_text", ref.data_row_id)
            continue
        split, reason = parse_split((ref.run or {}).get("split"))
        yield TextRow(ref, text, split, reason, run_labels(ref.run))


# --- one streaming pass, shared by the text tasks ------------------------------------------------

Emit = Callable[[dict[str, Any]], Any]


class Snapshot:
    """Where a streaming convert hands its rows, in export order as they are made: examples to
    `add_example`, predict-only rows (with their `reason`) to `add_predict_only`. Only counters are
    kept: rows per split, examples per (class, split), the skip and note logs."""

    def __init__(self, add_example: Emit, add_predict_only: Emit, progress: Progress):
        self._add_example = add_example
        self._add_predict_only = add_predict_only
        self.progress = progress
        self.skipped = exportv2.SkipLog()
        self.notes = exportv2.SkipLog()
        self.counts = StreamCounts()
        self.examples = 0
        self.predict_only = 0
        self.per_split = dict.fromkeys(SPLITS, 0)
        self.pairs: dict[tuple[str, str], int] = {}  # (class, split) → examples (or mentions) counted

    def text_rows(
        self, rows: Iterable[Mapping[str, Any]], model_run_id: str,
        on_ref: Callable[[exportv2.RowRef], None] | None = None,
    ) -> Iterator[TextRow]:
        """The usable text rows of the model run (stream_text_rows), skips logged here."""
        return stream_text_rows(rows, model_run_id, self.skipped, self.progress, self.counts, on_ref=on_ref)

    def add(self, row: dict[str, Any], reason: str | None, classes: Iterable[str] = ()) -> None:
        """Hand `row` on: a predict-only row when there is a `reason` (logged as skipped for training),
        else an example, counted once per class in `classes` (with repeats) under its split."""
        if reason:
            self.skipped.add(reason, row["data_row_id"])
            row["reason"] = reason
            self._add_predict_only(row)
            self.predict_only += 1
        else:
            self._add_example(row)
            self.examples += 1
            split = row["split"]
            self.per_split[split] += 1
            pairs = self.pairs
            for c in classes:
                pairs[(c, split)] = pairs.get((c, split), 0) + 1
        if (self.examples + self.predict_only) % PROGRESS_EVERY == 0:
            self.progress(f"converted {self.counts.rows} rows so far", rows=self.counts.rows)

    def require_rows(self, model_run_id: str) -> None:
        """Once the export is walked: DatasetError when it had no rows, or none of the model run."""
        if self.counts.rows == 0:
            raise DatasetError(f"model run {model_run_id!r} has no data rows in its export")
        if self.counts.in_run == 0:
            raise DatasetError(
                f"none of the {self.counts.rows} exported data rows belongs to model run {model_run_id!r}"
            )

    def classes(self) -> list[str]:
        return sorted({c for c, _ in self.pairs})

    def stats(self, model_run_id: str, **extra: Any) -> dict[str, Any]:
        """stats.json: the counts every text task writes, then `extra`."""
        return {
            "model_run_id": model_run_id,
            "rows": self.counts.rows,
            "examples": self.examples,
            "per_split": dict(self.per_split),
            "per_class": {c: {s: self.pairs.get((c, s), 0) for s in SPLITS} for c in self.classes()},
            "predict_only": self.predict_only,
            "skipped": self.skipped.as_dict(),
            "notes": self.notes.as_dict(),
            "fetched_urls": self.counts.urls,
            **extra,
        }

    def done(self, what: str = "examples") -> None:
        self.progress(
            f"converted {self.counts.rows} rows: {self.examples} {what}, {self.predict_only} predict-only, "
            f"{self.skipped.total()} not used for training",
            examples=self.examples,
        )


@contextmanager
def few_collections() -> Iterator[None]:
    """Fewer garbage-collector passes while a streaming convert runs: every row makes a dozen
    containers and a batch of them lives a while (URL_CHUNK rows), so with the default thresholds
    the collector keeps walking them and, promoted, the whole heap (~10% of a text ETL's time). The
    rows hold no reference cycles; what is alive before is frozen (left out of collections)."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], GC_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


GC_THRESHOLD = 50_000  # allocations between young-generation collections while a convert streams


class _Lines:
    """Rows → snapshot lines in a text file, written LINES_PER_WRITE at a time (one encode per write)."""

    def __init__(self, file: Any):
        self.file = file
        self.lines: list[str] = []

    def __call__(self, row: dict[str, Any]) -> None:
        lines = self.lines
        lines.append(dumps_row(row))
        if len(lines) >= LINES_PER_WRITE:
            self.flush()

    def flush(self) -> None:
        self.file.write("".join(self.lines))
        self.lines = []


LINES_PER_WRITE = 256


class StreamingTextTask(Task):
    """A text task whose convert is one pass over the export (`convert_rows`, handing rows to a
    Snapshot). `convert` collects the rows in lists; `convert_to` (what the etl job calls) writes
    dataset.jsonl and predict_only.jsonl as it goes and returns a Dataset reading them back on demand."""

    def check_params(self, params: Mapping[str, Any]) -> None:
        """ParamError for a bad conversion param, before the export is read."""

    @abstractmethod
    def convert_rows(
        self, rows: Iterable[Mapping[str, Any]], model_run_id: str, params: Mapping[str, Any], out: Snapshot
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Export v2 rows → (label_map, stats), one pass over `rows`, each row handed to `out`."""

    def convert(
        self,
        rows: Iterable[Mapping[str, Any]],
        model_run_id: str,
        params: Mapping[str, Any],
        out_uri: str,
        progress: Progress,
    ) -> Dataset:
        self.check_params(params)
        rows = exportv2.reiterable(rows)
        exportv2.require_rows_in_run(rows, model_run_id)
        examples: list[dict[str, Any]] = []
        predict_only: list[dict[str, Any]] = []
        out = Snapshot(examples.append, predict_only.append, progress)
        label_map, stats = self.convert_rows(rows, model_run_id, params, out)
        return Dataset(examples=examples, label_map=label_map, stats=stats, predict_only=predict_only)

    def convert_to(
        self,
        rows: Iterable[Mapping[str, Any]],
        model_run_id: str,
        params: Mapping[str, Any],
        out_uri: str,
        progress: Progress,
    ) -> Dataset:
        """`convert` in one pass over `rows` (any iterable, walked once) that writes dataset.jsonl
        and predict_only.jsonl under `out_uri` as it goes (published only if it succeeds); the
        Dataset's rows are read back from those files on demand, its split sizes are counted."""
        self.check_params(params)
        uris = dataset_uris(out_uri)
        with (
            few_collections(),
            storage.staged(uris["dataset"]) as examples_path,
            storage.staged(uris["predict_only"]) as predict_only_path,
            open(examples_path, "w", encoding="utf-8", newline="\n") as examples_file,
            open(predict_only_path, "w", encoding="utf-8", newline="\n") as predict_only_file,
        ):
            write_example, write_predict_only = _Lines(examples_file), _Lines(predict_only_file)
            out = Snapshot(write_example, write_predict_only, progress)
            label_map, stats = self.convert_rows(rows, model_run_id, params, out)
            write_example.flush()
            write_predict_only.flush()
        return Dataset(
            examples=SnapshotRows(uris["dataset"], stats["examples"]),
            label_map=label_map,
            stats=stats,
            predict_only=SnapshotRows(uris["predict_only"], stats["predict_only"]),
            split_sizes=dict(stats["per_split"]),
        )

    @staticmethod
    def class_split_counts(
        dataset: Dataset, count: Callable[[Iterable[Mapping[str, Any]]], dict[tuple[str, str], int]]
    ) -> dict[tuple[str, str], int]:
        """(class, split) → count of the dataset's examples: from its stats when convert_to streamed
        it (its rows are not read back to be counted), else `count(examples)`."""
        if isinstance(dataset.examples, SnapshotRows):
            per_class = dataset.stats.get("per_class") or {}
            return {(c, s): n for c, by_split in per_class.items() for s, n in by_split.items() if n}
        return count(dataset.examples)

    @staticmethod
    def require_examples(dataset: Dataset) -> None:
        if not dataset.examples:
            raise DatasetError(no_examples_message(dataset.stats))


def parse_text_instances(instances: Sequence[Any]) -> list[dict[str, Any]]:
    """Vertex instances: a string, or {"text": ...} (also "content", as Vertex text models use)."""
    rows = []
    for i, inst in enumerate(instances):
        if isinstance(inst, str):
            rows.append({"text": inst})
        elif isinstance(inst, Mapping) and isinstance(inst.get("text", inst.get("content")), str):
            rows.append({"text": inst.get("text", inst.get("content"))})
        else:
            raise ValueError(f'instance {i} must be a string or an object with a "text" string')
    return rows


def no_examples_message(stats: Mapping[str, Any]) -> str:
    skipped = stats.get("skipped", {})
    why = ", ".join(f"{v['count']} {k}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]["count"]))
    return (
        f"no labeled examples with a train/validation/test split in model run {stats.get('model_run_id', '')!r}"
        + (f" (rows skipped: {why})" if why else "")
    )
