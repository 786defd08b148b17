"""Named entities in text: a linear-chain CRF (sklearn-crfsuite) over BIO token tags with lexical,
shape, affix, Twitter and ±2 neighbour features; c1/c2 picked on the validation split (docs/architecture.md §3).

Spans are character offsets with an **inclusive** end (`text[start:end+1] == token`, Labelbox
TextEntity). Tokens keep their character offsets, so predicted tag runs map back to exact spans.
Offsets are Python code points; if the export's offsets only match the entity tokens when counted in
UTF-16 units (what a JavaScript UI counts), they are converted on the way in and predictions are
converted back on the way out (label_map["offsets"]). Every data row is predicted; one with no
entity found uploads no row (Labelbox has no "empty" entity annotation).

Run params (all optional):
  c1, c2          number or list to try (defaults [0.05, 0.2] × [0.01, 0.1])
  max_iterations  L-BFGS iterations (default 150)
  refit_on_validation  refit on train+validation with the chosen c1/c2 (default true)
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jobs.tasks import exportv2, multilabel, text_rows
from jobs.tasks.base import (
    MODEL_META_FILE,
    Dataset,
    DatasetError,
    Evaluation,
    ParamError,
    Progress,
    load_joblib,
    save_joblib,
)
from jobs.tasks.classification import CONFUSION_METRIC_NAME, row_uuid
from lbtrain import storage
from lbtrain.progress import Counter

MODEL_TYPE = "ner"
MODEL_FILE = "crf.joblib"
DEFAULT_C1 = (0.05, 0.2)
DEFAULT_C2 = (0.01, 0.1)

Span = tuple[str, int, int]  # (entity type, start, end inclusive), code points


# --- tokens with offsets -------------------------------------------------------------------------

_WS_TOKEN = re.compile(r"\S+")
_URL = re.compile(r"^(?:https?://|www\.)", re.IGNORECASE)
_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")  # a character UTF-16 counts as two units
_LEAD = set("\"([{«“‘¿¡")
_TRAIL = set(".,!?;:\"')]}»”’…")


def tokenize(text: str) -> list[tuple[int, int]]:
    """Whitespace tokens with leading brackets/quotes and a trailing punctuation run split off
    (URLs and all-punctuation tokens such as emoticons stay whole): (start, end exclusive)."""
    out: list[tuple[int, int]] = []
    for m in _WS_TOKEN.finditer(text):
        s, e = m.span()
        word = text[s:e]
        if word.isalnum():  # most words: no URL, no bracket, quote or punctuation to split off
            out.append((s, e))
            continue
        if _URL.match(word) or not any(ch.isalnum() for ch in word):
            out.append((s, e))
            continue
        while s < e - 1 and text[s] in _LEAD:
            out.append((s, s + 1))
            s += 1
        j = e
        while j - 1 > s and text[j - 1] in _TRAIL:
            j -= 1
        if not any(ch.isalnum() for ch in text[s:j]):
            j = e
        out.append((s, j))
        if j < e:
            out.append((j, e))
    return out


def bio_tags(spans: Sequence[tuple[int, int]], entities: Iterable[Span]) -> tuple[list[str], int]:
    """BIO tags for tokens from non-overlapping entities; also how many entity edges fell inside a
    token (misaligned: the entity is snapped to the tokens it touches)."""
    tags = ["O"] * len(spans)
    misaligned = 0
    for etype, start, end in entities:
        hit = [i for i, (s, e) in enumerate(spans) if s <= end and e > start]
        if not hit:
            misaligned += 1
            continue
        if spans[hit[0]][0] != start or spans[hit[-1]][1] != end + 1:
            misaligned += 1
        for k, i in enumerate(hit):
            tags[i] = f"{'B' if k == 0 else 'I'}-{etype}"
    return tags, misaligned


def decode(spans: Sequence[tuple[int, int]], tags: Sequence[str]) -> list[tuple[str, int, int, list[int]]]:
    """BIO tags → (type, start, end inclusive, token indices); a stray I- starts an entity."""
    out: list[tuple[str, int, int, list[int]]] = []
    current: list[Any] | None = None
    for i, tag in enumerate(tags):
        kind, _, etype = tag.partition("-")
        if kind == "I" and current is not None and current[0] == etype:
            current[3].append(i)
            continue
        if current is not None:
            out.append((current[0], spans[current[3][0]][0], spans[current[3][-1]][1] - 1, current[3]))
            current = None
        if kind in ("B", "I") and etype:
            current = [etype, None, None, [i]]
    if current is not None:
        out.append((current[0], spans[current[3][0]][0], spans[current[3][-1]][1] - 1, current[3]))
    return out


def utf16_to_cp(text: str, offset: int) -> int:
    """A UTF-16 code-unit offset into `text` → a code-point offset."""
    units = 0
    for i, ch in enumerate(text):
        if units >= offset:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def cp_to_utf16(text: str, offset: int) -> int:
    return offset + sum(1 for ch in text[:offset] if ord(ch) > 0xFFFF)


# --- features ------------------------------------------------------------------------------------


def _shape(word: str) -> str:
    out = []
    for ch in word:
        c = "X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch
        if not out or out[-1] != c:
            out.append(c)
    return "".join(out)[:8]


def _token_features(word: str) -> dict[str, Any]:
    lower = word.lower()
    core = word[1:] if word[:1] in "@#" and len(word) > 1 else word
    return {
        "lower": lower,
        "core": core.lower(),
        "shape": _shape(word),
        "title": core[:1].isupper(),
        "upper": core.isupper() and len(core) > 1,
        "lowerish": core.islower(),
        "digit": any(ch.isdigit() for ch in word),
        "alpha": word.isalpha(),
        "mention": word.startswith("@"),
        "hashtag": word.startswith("#"),
        "url": bool(_URL.match(word)),
        "punct": not any(ch.isalnum() for ch in word),
        "p2": core[:2].lower(),
        "p3": core[:3].lower(),
        "s2": lower[-2:],
        "s3": lower[-3:],
        "s4": lower[-4:],
        "len": min(len(word), 10) // 3,
    }


def sentence_features(text: str, spans: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """crfsuite feature dicts for each token: its own features, neighbours at ±1/±2, bigrams, and
    whether the tweet is mostly capitalized (then capitals say little about entities)."""
    words = [text[s:e] for s, e in spans]
    base = [_token_features(w) for w in words]
    alpha = [w for w in words if w[:1].isalpha()]
    caps = sum(1 for w in alpha if w[:1].isupper()) / len(alpha) if alpha else 0.0
    mostly = "upper" if sum(1 for w in alpha if w.isupper()) > 0.6 * len(alpha) else "title" if caps > 0.6 else "mixed"
    n = len(words)
    feats = []
    for i, f in enumerate(base):
        d: dict[str, Any] = {"bias": 1.0, "case_mode": mostly}
        d.update(f)
        d["title_in_" + mostly] = f["title"]
        if i == 0:
            d["BOS"] = True
        if i == n - 1:
            d["EOS"] = True
        for k in (-2, -1, 1, 2):
            j = i + k
            if 0 <= j < n:
                g = base[j]
                d[f"{k}:lower"] = g["lower"]
                d[f"{k}:shape"] = g["shape"]
                d[f"{k}:title"] = g["title"]
                d[f"{k}:upper"] = g["upper"]
                if abs(k) == 1:
                    d[f"{k}:s3"] = g["s3"]
                    d[f"{k}:mention"] = g["mention"]
                    d[f"{k}:hashtag"] = g["hashtag"]
                    d[f"{k}:punct"] = g["punct"]
            else:
                d[f"{k}:pad"] = True
        if i > 0:
            d["bigram-"] = base[i - 1]["lower"] + "|" + f["lower"]
        if i < n - 1:
            d["bigram+"] = f["lower"] + "|" + base[i + 1]["lower"]
        feats.append(d)
    return feats


# --- model ---------------------------------------------------------------------------------------


def _grid(params: Mapping[str, Any], name: str, default: Sequence[float]) -> list[float]:
    raw = params.get(name, list(default))
    grid = raw if isinstance(raw, list) else [raw]
    if not grid or not all(isinstance(c, int | float) and not isinstance(c, bool) and c >= 0 for c in grid):
        raise ParamError(f"param {name} must be a non-negative number or a list of them, not {raw!r}")
    return sorted(float(c) for c in grid)


def _train_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"c1": _grid(params, "c1", DEFAULT_C1), "c2": _grid(params, "c2", DEFAULT_C2)}
    value = params.get("max_iterations", 150)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ParamError(f"param max_iterations must be a positive integer, not {value!r}")
    out["max_iterations"] = value
    refit = params.get("refit_on_validation", True)
    if not isinstance(refit, bool):
        raise ParamError(f"param refit_on_validation must be true or false, not {refit!r}")
    out["refit_on_validation"] = refit
    return out


def _crf(c1: float, c2: float, max_iterations: int) -> Any:
    import sklearn_crfsuite

    return sklearn_crfsuite.CRF(
        algorithm="lbfgs", c1=c1, c2=c2, max_iterations=max_iterations, all_possible_transitions=True
    )


def _xy(examples: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[list[str]]]:
    xs, ys = [], []
    for e in examples:
        spans = tokenize(e["text"])
        if not spans:
            continue
        xs.append(sentence_features(e["text"], spans))
        ys.append(bio_tags(spans, [(x["type"], x["start"], x["end"]) for x in e["entities"]])[0])
    return xs, ys


def score_spans(
    gold: Sequence[Iterable[Span]], pred: Sequence[Iterable[Span]], types: Sequence[str]
) -> dict[str, Any]:
    """Exact-match entity precision/recall/F1 overall and per type (flat, Firestore-safe)."""
    counts = {t: [0, 0, 0] for t in types}  # tp, fp, fn
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(g), set(p)
        for span in gs | ps:
            c = counts.setdefault(span[0], [0, 0, 0])
            c[0 if span in gs and span in ps else 1 if span in ps else 2] += 1
    per_type = {}
    for t in sorted(counts):
        precision, recall, f1 = multilabel.prf(*counts[t])
        per_type[t] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": counts[t][0] + counts[t][2],
        }
    tp, fp, fn = (sum(c[k] for c in counts.values()) for k in range(3))
    precision, recall, f1 = multilabel.prf(tp, fp, fn)
    return {
        "entity_f1": round(f1, 4),
        "entity_precision": round(precision, 4),
        "entity_recall": round(recall, 4),
        "gold_entities": tp + fn,
        "predicted_entities": tp + fp,
        "per_type": per_type,
    }


class EntityTagger:
    """A fitted CRF and model.json metadata: text → entity spans with confidences."""

    def __init__(self, crf: Any, meta: dict[str, Any]):
        self.crf = crf
        self.meta = meta

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            text = str(r.get("text") or "")
            spans = tokenize(text)
            if not spans:
                out.append({"entities": []})
                continue
            x = sentence_features(text, spans)
            tags = self.crf.predict_single(x)
            marginals = self.crf.predict_marginals_single(x)
            entities = []
            for etype, start, end, idx in decode(spans, tags):
                conf = sum(marginals[i].get(tags[i], 0.0) for i in idx) / len(idx)
                entities.append(
                    {
                        "type": etype,
                        "start": start,
                        "end": end,
                        "text": text[start : end + 1],
                        "confidence": round(conf, 6),
                    }
                )
            out.append({"entities": entities})
        return out

    def parse_instances(self, instances: Sequence[Any]) -> list[dict[str, Any]]:
        return text_rows.parse_text_instances(instances)


def prediction_row(data_row_id: str, text: str, entity: Mapping[str, Any], utf16: bool) -> dict[str, Any]:
    """TextEntity prediction (fixtures/labelbox/text_entity_import.json), `end` inclusive."""
    start, end = int(entity["start"]), int(entity["end"])
    if utf16:
        start, end = cp_to_utf16(text, start), cp_to_utf16(text, end + 1) - 1
    return {
        "uuid": row_uuid("prediction", "ner", data_row_id, entity["type"], str(start), str(end)),
        "name": entity["type"],
        "confidence": round(min(max(float(entity["confidence"]), 0.0), 1.0), 6),
        "location": {"start": start, "end": end},
        "dataRow": {"id": data_row_id},
    }


def confusion_rows(data_row_id: str, gold: Iterable[Span], pred: Iterable[Span], types: Sequence[str]) -> list[dict]:
    """Per entity type and data row: [TP, FP, TN, FN] counted in exact-match spans; TN is 1 when
    the type is neither in the labels nor predicted (the row is a true negative for it)."""
    gs, ps = set(gold), set(pred)
    rows = []
    for t in types:
        g = {s for s in gs if s[0] == t}
        p = {s for s in ps if s[0] == t}
        tp, fp, fn = len(g & p), len(p - g), len(g - p)
        rows.append(
            {
                "uuid": row_uuid("metric", CONFUSION_METRIC_NAME, t, data_row_id),
                "dataRow": {"id": data_row_id},
                "metricValue": [tp, fp, int(not g and not p), fn],
                "featureName": t,
                "metricName": CONFUSION_METRIC_NAME,
                "aggregation": "CONFUSION_MATRIX",
            }
        )
    return rows


# --- the task ------------------------------------------------------------------------------------


def _label_entities(
    text: str, label: Mapping[str, Any], notes: exportv2.SkipLog, data_row_id: str, offsets: dict[str, int]
) -> list[Span]:
    """A label's TextEntity objects → valid, non-overlapping spans (the rest noted in stats)."""
    found: list[Span] = []
    for obj in (label.get("annotations") or {}).get("objects") or []:
        if not isinstance(obj, Mapping):
            continue
        loc = obj.get("location")
        kind = obj.get("annotation_kind")
        if not isinstance(loc, Mapping) or (kind and kind != "TextEntity") or not obj.get("name"):
            notes.add("not_a_text_entity", data_row_id)
            continue
        start, end, token = loc.get("start"), loc.get("end"), loc.get("token")
        if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool):
            notes.add("invalid_span", data_row_id)
            continue
        if isinstance(token, str) and text[start : end + 1] != token:
            s16, e16 = utf16_to_cp(text, start), utf16_to_cp(text, end + 1) - 1
            if text[s16 : e16 + 1] == token:
                start, end = s16, e16
                offsets["utf16"] += 1
            else:
                notes.add("token_mismatch", data_row_id)  # the offsets are trusted
        elif isinstance(token, str) and not text.isascii() and _ASTRAL.search(text[:end]):
            offsets["codepoint"] += 1
        if start < 0 or end < start or end >= len(text):
            notes.add("invalid_span", data_row_id)
            continue
        found.append((str(obj["name"]), start, end))
    kept: list[Span] = []
    for span in sorted(found, key=lambda s: (s[1], -(s[2] - s[1]), s[0])):
        if kept and span[1] <= max(k[2] for k in kept):
            notes.add("overlapping_span", data_row_id)  # the earlier (longer) one is kept
            continue
        kept.append(span)
    return kept


class NamedEntityRecognition(text_rows.StreamingTextTask):
    model_type = MODEL_TYPE

    def convert_rows(
        self, rows: Iterable[Mapping[str, Any]], model_run_id: str, params: Mapping[str, Any], out: text_rows.Snapshot
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Export v2 rows → (label_map, stats), one pass over `rows`; the offset unit the export
        counts in is decided by the majority of entities that tell."""
        notes = out.notes
        offsets = {"utf16": 0, "codepoint": 0}
        misaligned = 0
        for tr in out.text_rows(rows, model_run_id):
            row = tr.base()
            reason = tr.split_reason
            entities: list[Span] = []
            if not tr.labels:
                reason = "no_label"
            else:
                if len(tr.labels) > 1:
                    notes.add("several_labels_first_used", tr.ref.data_row_id)
                entities = _label_entities(tr.text, tr.labels[0], notes, tr.ref.data_row_id, offsets)
                if not entities:
                    notes.add("no_entities", tr.ref.data_row_id)  # a labeled row with nothing to tag
                n_bad = bio_tags(tokenize(tr.text), entities)[1]
                if n_bad:
                    misaligned += n_bad
                    notes.add("misaligned_span", tr.ref.data_row_id)
            row["entities"] = [{"type": t, "start": s, "end": e} for t, s, e in entities]
            out.add(row, reason, [t for t, _, _ in entities])
        out.require_rows(model_run_id)
        types = out.classes()
        stats = out.stats(
            model_run_id, entities=sum(out.pairs.values()), misaligned_spans=misaligned, offsets=offsets
        )
        out.done(f"examples with {stats['entities']} entities ({len(types)} types)")
        unit = "utf16" if offsets["utf16"] > offsets["codepoint"] else "codepoint"
        return {"entity_types": types, "classes": types, "offsets": unit}, stats

    def validate(self, dataset: Dataset, min_examples: Mapping[str, int]) -> None:
        self.require_examples(dataset)
        types = dataset.label_map.get("entity_types", [])
        if not types:
            raise DatasetError(
                f"no entity is labeled in model run {dataset.stats.get('model_run_id', '')!r}: nothing to learn"
            )
        multilabel.validate_counts(
            self.class_split_counts(dataset, _mentions), types, min_examples, noun="entity type", unit="entities"
        )

    def etl_summary(self, dataset: Dataset) -> dict[str, Any]:
        return {
            **super().etl_summary(dataset),
            "classes": len(dataset.label_map.get("entity_types", [])),
            "entities": dataset.stats.get("entities", 0),
            "misaligned_spans": dataset.stats.get("misaligned_spans", 0),
        }

    def train(
        self, dataset: Dataset, model_dir: str, params: Mapping[str, Any], progress: Progress
    ) -> dict[str, Any]:

        cfg = _train_params(params)
        started = time.monotonic()
        train, val = dataset.train_validation()
        types = list(dataset.label_map["entity_types"])
        progress(
            f"training a CRF on {len(train)} examples ({len(val)} validation, {len(types)} entity types)",
            train_size=len(train),
            validation_size=len(val),
        )
        x_train, y_train = _xy(train)
        best: tuple[float, float, float, Any] | None = None
        tried = []
        combos = list(itertools.product(cfg["c1"], cfg["c2"]))
        refit = bool(cfg["refit_on_validation"] and val)
        fits = Counter(progress, "CRF fit", (len(combos) if val else 1) + refit, metric="entity_f1")
        for c1, c2 in combos:
            crf = _crf(c1, c2, cfg["max_iterations"]).fit(x_train, y_train)
            if not val or len(combos) == 1:
                best = (0.0, c1, c2, crf)
                fits.step(f"c1={c1:g} c2={c2:g}: fitted", note=f"c1={c1:g} c2={c2:g}")
                break
            pred = EntityTagger(crf, {}).predict(val)
            m = score_spans(
                [[(x["type"], x["start"], x["end"]) for x in e["entities"]] for e in val],
                [[(x["type"], x["start"], x["end"]) for x in p["entities"]] for p in pred],
                types,
            )
            tried.append({"c1": c1, "c2": c2, "entity_f1": m["entity_f1"]})
            fits.step(f"c1={c1:g} c2={c2:g}: validation entity_f1={m['entity_f1']:.4f}", value=m["entity_f1"],
                      note=f"c1={c1:g} c2={c2:g}", extra=tried[-1])
            if best is None or m["entity_f1"] > best[0]:
                best = (m["entity_f1"], c1, c2, crf)
        assert best is not None
        val_f1, c1, c2, crf = best
        fitted_on = ["train"]
        if refit:
            progress(f"refitting with c1={c1:g} c2={c2:g} on train+validation ({len(train) + len(val)} examples)")
            x_all, y_all = _xy(train + val)
            crf = _crf(c1, c2, cfg["max_iterations"]).fit(x_all, y_all)
            fits.step(f"refitted with c1={c1:g} c2={c2:g} on train+validation",
                      note=f"refit c1={c1:g} c2={c2:g} on train+validation")
            fitted_on = ["train", "validation"]
        save_joblib(model_dir, crf, MODEL_FILE)
        seconds = round(time.monotonic() - started, 2)
        meta = {
            "model_type": MODEL_TYPE,
            "entity_types": types,
            "classes": types,
            "offsets": dataset.label_map.get("offsets", "codepoint"),
            "format": "sklearn-crfsuite-joblib",
            "file": MODEL_FILE,
            "input": "text",
            "params": {**cfg, "c1": c1, "c2": c2},
            "fitted_on": fitted_on,
        }
        storage.write_json(storage.join(model_dir, MODEL_META_FILE), meta)
        progress(f"trained in {seconds:.1f}s (c1={c1:g} c2={c2:g})", train_seconds=seconds)
        return {
            "validation_entity_f1": val_f1 if tried else None,
            "train_size": len(train),
            "validation_size": len(val),
            "fitted_on_size": len(train) + (len(val) if fitted_on[-1] == "validation" else 0),
            "c1": c1,
            "c2": c2,
            "grid": tried,
            "train_seconds": seconds,
        }

    def load_predictor(self, model_dir: str, sha256: str = "") -> EntityTagger:
        return EntityTagger(*load_joblib(model_dir, MODEL_TYPE, MODEL_FILE, sha256))

    def evaluate(self, dataset: Dataset, predictor: Any, progress: Progress) -> Evaluation:
        types = list(dataset.label_map["entity_types"])
        utf16 = dataset.label_map.get("offsets") == "utf16"
        everything = dataset.all_rows()
        progress(f"predicting {len(everything)} data rows", rows=len(everything))
        predictions = predictor.predict(everything)
        rows: list[dict[str, Any]] = []
        for r, p in zip(everything, predictions, strict=True):
            rows.extend(prediction_row(r["data_row_id"], r["text"], ent, utf16) for ent in p["entities"])
        gold: list[list[Span]] = []
        pred: list[list[Span]] = []
        for example, p in zip(dataset.examples, predictions, strict=False):
            if example["split"] != "test":
                continue
            g = [(x["type"], x["start"], x["end"]) for x in example["entities"]]
            q = [(x["type"], x["start"], x["end"]) for x in p["entities"]]
            gold.append(g)
            pred.append(q)
            rows.extend(confusion_rows(example["data_row_id"], g, q, types))
        if not gold:
            raise DatasetError('no examples in split "test" to evaluate on')
        m = score_spans(gold, pred, types)
        m["test_size"] = len(gold)
        m["predicted_rows"] = len(predictions)
        m["predicted_spans_all_rows"] = sum(len(p["entities"]) for p in predictions)
        m["empty_prediction_rows"] = sum(1 for p in predictions if not p["entities"])  # nothing to upload
        progress(
            f"test entity_f1={m['entity_f1']:.4f} precision={m['entity_precision']:.4f} "
            f"recall={m['entity_recall']:.4f} on {len(gold)} rows",
            entity_f1=m["entity_f1"],
            test_size=len(gold),
        )
        keys = ("entity_f1", "entity_precision", "entity_recall", "gold_entities", "predicted_entities", "test_size")
        summary = {**{k: m[k] for k in keys}, "per_type": m["per_type"], "predicted_rows": len(predictions)}
        return Evaluation(metrics=m, summary=summary, prediction_rows=rows)


def _mentions(examples: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """(entity type, split) → number of entity mentions."""
    counts: dict[tuple[str, str], int] = {}
    for e in examples:
        for x in e["entities"]:
            counts[(x["type"], e["split"])] = counts.get((x["type"], e["split"]), 0) + 1
    return counts


TASK = NamedEntityRecognition()
