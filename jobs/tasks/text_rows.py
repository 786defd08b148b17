"""Text data rows of an Export v2 model run, shared by the text tasks:
rows outside the run, without an id, duplicated, unfetchable or empty are logged, never dropped
silently; the rest come back with their (inline or fetched) text, split and labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def text_rows(
    rows: exportv2.Rows, model_run_id: str, skipped: exportv2.SkipLog, progress: Progress
) -> tuple[list[TextRow], int]:
    """Usable text rows of the model run (export order) and how many texts were fetched by URL."""
    exportv2.require_rows_in_run(rows, model_run_id)
    refs = [exportv2.row_ref(r, model_run_id) for r in rows]
    in_run = [ref for ref in refs if ref.run is not None]
    n_urls = sum(1 for ref in in_run if isinstance(ref.row_data, str) and exportv2.is_url(ref.row_data))
    if n_urls:
        progress(f"fetching {n_urls} text row(s) by URL", urls=n_urls)
    texts = exportv2.resolve_texts([ref.row_data for ref in in_run])
    for ref in refs:
        if ref.run is None:
            skipped.add("not_in_model_run", ref.data_row_id)
    out: list[TextRow] = []
    seen: set[str] = set()
    for ref, text in zip(in_run, texts, strict=True):
        if not ref.data_row_id:
            skipped.add("no_data_row_id", ref.global_key or "?")
            continue
        if ref.data_row_id in seen:
            skipped.add("duplicate_data_row", ref.data_row_id)
            continue
        seen.add(ref.data_row_id)
        if isinstance(text, exportv2.FetchError):
            skipped.add(text.reason, ref.data_row_id)
            continue
        if not text.strip():
            skipped.add("no_text", ref.data_row_id)
            continue
        split, reason = exportv2.parse_split((ref.run or {}).get("split"))
        out.append(TextRow(ref, text, split, reason, exportv2.run_labels(ref.run)))
    return out, n_urls


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
