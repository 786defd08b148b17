"""Text data rows of an Export v2 model run, shared by the text tasks:
rows outside the run, without an id, duplicated, unfetchable or empty are logged, never dropped
silently; the rest come back with their (inline or fetched) text, split and labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.tasks import exportv2
from jobs.tasks.base import Progress


@dataclass(frozen=True)
class TextRow:
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


@dataclass
class StreamCounts:
    """What stream_text_rows saw, filled in as it goes: export rows, rows of the model run, URLs fetched."""

    rows: int = 0
    in_run: int = 0
    urls: int = 0


def text_rows(
    rows: exportv2.Rows, model_run_id: str, skipped: exportv2.SkipLog, progress: Progress
) -> tuple[list[TextRow], int]:
    """Usable text rows of the model run (export order) and how many texts were fetched by URL."""
    exportv2.require_rows_in_run(rows, model_run_id)
    counts = StreamCounts()
    out = list(stream_text_rows(rows, model_run_id, skipped, progress, counts))
    return out, counts.urls


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
    # A dict of str → None, not a set: the garbage collector untracks it (sets it would walk in
    # every full collection: ~20% of a million-row ETL's time).
    seen: dict[str, None] = {}
    batch: list[exportv2.RowRef] = []
    for row in rows:
        counts.rows += 1
        ref = exportv2.row_ref(row, model_run_id)
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
    seen: dict[str, None],
) -> Iterator[TextRow]:
    counts.in_run += len(batch)
    n_urls = sum(1 for ref in batch if isinstance(ref.row_data, str) and exportv2.is_url(ref.row_data))
    if n_urls:
        counts.urls += n_urls
        progress(f"fetching {n_urls} text row(s) by URL ({counts.urls} so far)", urls=counts.urls)
        texts: Sequence[Any] = exportv2.resolve_texts([ref.row_data for ref in batch])
    else:
        texts = [v if isinstance(v, str) else "" for v in (ref.row_data for ref in batch)]
    for ref, text in zip(batch, texts, strict=True):
        if not ref.data_row_id:
            skipped.add("no_data_row_id", ref.global_key or "?")
            continue
        if ref.data_row_id in seen:
            skipped.add("duplicate_data_row", ref.data_row_id)
            continue
        seen[ref.data_row_id] = None
        if isinstance(text, exportv2.FetchError):
            skipped.add(text.reason, ref.data_row_id)
            continue
        if not text.strip():
            skipped.add("no_text", ref.data_row_id)
            continue
        split, reason = exportv2.parse_split((ref.run or {}).get("split"))
        yield TextRow(ref, text, split, reason, exportv2.run_labels(ref.run))


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
