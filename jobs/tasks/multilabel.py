"""Multi-label pieces shared by text and image multi-label tasks (and NER's per-type counts):
Export v2 targets (checklist answers, or several radios as `question/answer`), validation,
metrics without nested arrays, and the Labelbox prediction/metric rows. Pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jobs.tasks import exportv2
from jobs.tasks.base import SPLITS, DatasetError
from jobs.tasks.classification import CONFUSION_METRIC_NAME, row_uuid

RADIO_SEP = "/"  # several radio questions → targets "question/answer"


# --- targets from Export v2 ----------------------------------------------------------------------


def first_checklist_question(rows: Sequence[Mapping[str, Any]], model_run_id: str) -> str | None:
    """Name of the first checklist question in the model run's labels (export order)."""
    for row in rows:
        for label in exportv2.run_labels(exportv2.find_run(row, model_run_id)):
            for c in exportv2.classifications(label):
                if isinstance(c.get("checklist_answers"), list) and c.get("name"):
                    return str(c["name"])
    return None


def radio_questions(rows: Sequence[Mapping[str, Any]], model_run_id: str) -> list[str]:
    """Every radio question answered in the model run, sorted."""
    out: set[str] = set()
    for row in rows:
        for label in exportv2.run_labels(exportv2.find_run(row, model_run_id)):
            for c in exportv2.classifications(label):
                if isinstance(c.get("radio_answer"), Mapping) and c.get("name"):
                    out.add(str(c["name"]))
    return sorted(out)


def label_targets(label: Mapping[str, Any], mode: str, questions: Sequence[str]) -> tuple[set[str], bool]:
    """(target set, whether the label answers any of `questions`) for one label. Top-level
    classifications only: nested ones under answers are ignored (docs/architecture.md §11)."""
    targets: set[str] = set()
    answered = False
    for c in exportv2.classifications(label):
        name = c.get("name")
        if name not in questions:
            continue
        if mode == "checklist" and isinstance(c.get("checklist_answers"), list):
            answered = True
            targets.update(
                str(a["name"]) for a in c["checklist_answers"] if isinstance(a, Mapping) and a.get("name")
            )
        elif mode == "radios" and isinstance(c.get("radio_answer"), Mapping) and c["radio_answer"].get("name"):
            answered = True
            targets.add(f"{name}{RADIO_SEP}{c['radio_answer']['name']}")
    return targets, answered


# --- validation ----------------------------------------------------------------------------------


def validate_counts(
    counts: Mapping[tuple[str, str], int],
    classes: Sequence[str],
    min_examples: Mapping[str, int],
    *,
    noun: str = "class",
    unit: str = "examples",
) -> None:
    """Every class needs min_examples[split] (examples containing it, or mentions) per split."""
    problems = [
        (c, s, counts.get((c, s), 0), min_examples.get(s, 1))
        for s in SPLITS
        for c in classes
        if counts.get((c, s), 0) < min_examples.get(s, 1)
    ]
    if problems:
        c, s, n, need = problems[0]
        extra = len(problems) - 1
        more = f"; {extra} more {noun}/split pair{'s are' if extra > 1 else ' is'} also too small" if extra else ""
        raise DatasetError(f'too few {unit}: {noun} "{c}" has {n} in split "{s}" (minimum {need}){more}')


def count_examples(examples: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """(class, split) → number of examples whose target set contains the class."""
    counts: dict[tuple[str, str], int] = {}
    for e in examples:
        for c in e.get("targets") or []:
            counts[(c, e["split"])] = counts.get((c, e["split"]), 0) + 1
    return counts


# --- metrics -------------------------------------------------------------------------------------


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def metrics(y_true: Sequence[set[str]], y_pred: Sequence[set[str]], classes: Sequence[str]) -> dict[str, Any]:
    """micro/macro F1, subset accuracy, per-class P/R/F1/support; flat dicts only (Firestore)."""
    per_class: dict[str, dict[str, float | int]] = {}
    totals = [0, 0, 0]
    f1s = []
    for c in classes:
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if c in t and c in p)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if c not in t and c in p)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if c in t and c not in p)
        precision, recall, f1 = prf(tp, fp, fn)
        f1s.append(f1)
        totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
        per_class[c] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": tp + fn,
        }
    micro_p, micro_r, micro_f1 = prf(*totals)
    n = len(y_true)
    exact = sum(1 for t, p in zip(y_true, y_pred, strict=True) if set(t) == set(p))
    return {
        "micro_f1": round(micro_f1, 4),
        "micro_precision": round(micro_p, 4),
        "micro_recall": round(micro_r, 4),
        "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else 0.0,
        "subset_accuracy": round(exact / n, 4) if n else 0.0,
        "test_size": n,
        "per_class": per_class,
    }


def summary(m: Mapping[str, Any]) -> dict[str, Any]:
    """What outputs.json carries: headline numbers and the (flat) per-class dict."""
    keys = ("micro_f1", "micro_precision", "micro_recall", "macro_f1", "subset_accuracy", "test_size", "per_class")
    return {k: m[k] for k in keys if k in m}


# --- Labelbox rows -------------------------------------------------------------------------------


def _conf(p: float) -> float:
    return round(min(max(float(p), 0.0), 1.0), 6)


def checklist_row(question: str, data_row_id: str, answers: Mapping[str, float]) -> dict[str, Any]:
    """Checklist prediction (fixtures/labelbox/classification_import_name_only.json, "answer" list)."""
    return {
        "uuid": row_uuid("prediction", question, data_row_id),
        "name": question,
        "answer": [{"name": c, "confidence": _conf(p)} for c, p in sorted(answers.items())],
        "dataRow": {"id": data_row_id},
    }


def radio_rows(data_row_id: str, answers: Mapping[str, float]) -> list[dict[str, Any]]:
    """`question/answer` targets → one radio prediction per question (its most confident answer)."""
    best: dict[str, tuple[str, float]] = {}
    for target, p in answers.items():
        question, _, answer = target.partition(RADIO_SEP)
        if question not in best or p > best[question][1]:
            best[question] = (answer, p)
    return [
        {
            "uuid": row_uuid("prediction", q, data_row_id),
            "name": q,
            "answer": {"name": a, "confidence": _conf(p)},
            "dataRow": {"id": data_row_id},
        }
        for q, (a, p) in sorted(best.items())
    ]


def confusion_rows(
    data_row_id: str, true: Iterable[str], pred: Iterable[str], classes: Sequence[str]
) -> list[dict[str, Any]]:
    """One CONFUSION_MATRIX metric row per class for one data row: [TP, FP, TN, FN]
    (fixtures/labelbox/custom_confusion_matrix_import.json)."""
    t, p = set(true), set(pred)
    rows = []
    for c in classes:
        tp, fp, fn = int(c in t and c in p), int(c not in t and c in p), int(c in t and c not in p)
        rows.append(
            {
                "uuid": row_uuid("metric", CONFUSION_METRIC_NAME, c, data_row_id),
                "dataRow": {"id": data_row_id},
                "metricValue": [tp, fp, 1 - tp - fp - fn, fn],
                "featureName": c,
                "metricName": CONFUSION_METRIC_NAME,
                "aggregation": "CONFUSION_MATRIX",
            }
        )
    return rows
