"""Single-label classification pieces shared by text and image tasks: metrics, validation,
and the Labelbox prediction/metric rows. Pure Python so they are easy to test and reuse.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.tasks.base import SPLITS, Dataset, DatasetError, Evaluation, Progress

CONFUSION_METRIC_NAME = "confusion_matrix"  # custom metric name ("precision", "f1"... are reserved)
_UUID_NS = uuid.UUID("6f0f6a57-3a35-4a51-9d4e-6c2b7f1f2d10")


def validate_counts(
    examples: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    min_examples: Mapping[str, int],
    *,
    model_run_id: str = "",
    per_class: Mapping[str, Mapping[str, int]] | None = None,
) -> None:
    """Every class needs min_examples[split] examples in each split; ≥ 2 classes overall.
    `per_class` ({class: {split: examples}}), when given, is used instead of counting `examples`."""
    where = f" in model run {model_run_id!r}" if model_run_id else ""
    if not examples:
        raise DatasetError(f"no labeled examples with a train/validation/test split{where}")
    if len(classes) < 2:
        found = ", ".join(f'"{c}"' for c in classes) or "none"
        raise DatasetError(f"need at least 2 classes to train, found {len(classes)} ({found}){where}")
    counts = {(c, s): 0 for c in classes for s in SPLITS}
    if per_class is not None:
        for key in counts:
            counts[key] = int((per_class.get(key[0]) or {}).get(key[1], 0))
    else:
        for e in examples:
            key = (e["target"], e["split"])
            if key in counts:
                counts[key] += 1
    problems = [
        (c, s, counts[(c, s)], min_examples.get(s, 1))
        for s in SPLITS
        for c in classes
        if counts[(c, s)] < min_examples.get(s, 1)
    ]
    if problems:
        c, s, n, need = problems[0]
        extra = len(problems) - 1
        more = (
            f"; {extra} more class/split pair{'s are' if extra > 1 else ' is'} also too small"
            if extra
            else ""
        )
        raise DatasetError(f'too few examples: class "{c}" has {n} in split "{s}" (minimum {need}){more}')


def metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro/micro/weighted F1, per-class P/R/F1/support and the confusion matrix
    (rows = true class, columns = predicted, in `classes` order)."""
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    matrix = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred, strict=True):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    n = len(y_true)
    accuracy = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p) / n if n else 0.0
    per_class: dict[str, dict[str, float | int]] = {}
    f1s: list[float] = []
    for c, i in index.items():
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[c] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
    weighted = sum(f1 * per_class[c]["support"] for f1, c in zip(f1s, classes, strict=True))
    return {
        "accuracy": round(accuracy, 4),
        "macro_f1": round(sum(f1s) / k, 4) if k else 0.0,
        "micro_f1": round(accuracy, 4),  # single-label: micro P = micro R = micro F1 = accuracy
        "weighted_f1": round(weighted / n, 4) if n else 0.0,
        "test_size": n,
        "per_class": per_class,
        "confusion_matrix": confusion_doc(classes, matrix),
    }


def confusion_doc(classes: Sequence[str], matrix: list[list[int]]) -> dict[str, Any]:
    """Confusion matrix without arrays nested in arrays (Firestore rejects those; the orchestrator
    copies outputs.json metrics into the run document): one row per true class, counts per
    predicted class in `labels` order."""
    return {
        "labels": list(classes),
        "rows": [{"true": c, "predicted": list(row)} for c, row in zip(classes, matrix, strict=True)],
    }


def confusion_matrix(doc: Mapping[str, Any]) -> list[list[int]]:
    """`confusion_doc` → the plain matrix (rows = true, columns = predicted)."""
    return [list(r["predicted"]) for r in doc["rows"]]


def row_uuid(*parts: str) -> str:
    """Deterministic annotation uuid: re-running evaluate uploads identical rows."""
    return str(uuid.uuid5(_UUID_NS, "/".join(parts)))


def prediction_row(question: str, data_row_id: str, answer: str, confidence: float) -> dict[str, Any]:
    """Radio prediction (fixtures/labelbox/classification_import_name_only.json)."""
    return {
        "uuid": row_uuid("prediction", question, data_row_id),
        "name": question,
        "answer": {"name": answer, "confidence": round(min(max(float(confidence), 0.0), 1.0), 6)},
        "dataRow": {"id": data_row_id},
    }


def confusion_rows(data_row_id: str, true: str, pred: str, classes: Sequence[str]) -> list[dict[str, Any]]:
    """One CONFUSION_MATRIX metric row per class for one data row: [TP, FP, TN, FN]
    (fixtures/labelbox/custom_confusion_matrix_import.json)."""
    rows = []
    for c in classes:
        tp = int(true == c and pred == c)
        fp = int(true != c and pred == c)
        fn = int(true == c and pred != c)
        tn = 1 - tp - fp - fn
        rows.append(
            {
                "uuid": row_uuid("metric", CONFUSION_METRIC_NAME, c, data_row_id),
                "dataRow": {"id": data_row_id},
                "metricValue": [tp, fp, tn, fn],
                "featureName": c,
                "metricName": CONFUSION_METRIC_NAME,
                "aggregation": "CONFUSION_MATRIX",
            }
        )
    return rows


def summary(m: Mapping[str, Any]) -> dict[str, Any]:
    """What outputs.json carries (the orchestrator copies it into the run document)."""
    keys = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "test_size", "per_class", "confusion_matrix")
    return {k: m[k] for k in keys if k in m}


def evaluate_single_label(dataset: Dataset, predictor: Any, progress: Progress) -> Evaluation:
    """Every single-label type (text or image) evaluates alike: predict every data row, score the
    test split, and build radio prediction rows plus per-class confusion rows for Labelbox."""
    question = dataset.label_map["question"]
    classes = list(dataset.label_map["classes"])
    every = dataset.all_rows()
    progress(f"predicting {len(every)} data rows", rows=len(every))
    predictions = predictor.predict(every)
    rows = [prediction_row(question, r["data_row_id"], p["label"], p["confidence"])
            for r, p in zip(every, predictions, strict=True)]
    y_true: list[str] = []
    y_pred: list[str] = []
    for example, p in zip(dataset.examples, predictions, strict=False):  # examples come first in `every`
        if example["split"] != "test":
            continue
        y_true.append(example["target"])
        y_pred.append(p["label"])
        rows.extend(confusion_rows(example["data_row_id"], example["target"], p["label"], classes))
    if not y_true:
        raise DatasetError('no examples in split "test" to evaluate on')
    m = metrics(y_true, y_pred, classes)
    m["predicted_rows"] = len(predictions)
    m["question"] = question
    progress(f"test accuracy={m['accuracy']:.4f} macro_f1={m['macro_f1']:.4f} on {len(y_true)} rows",
             accuracy=m["accuracy"], macro_f1=m["macro_f1"], test_size=len(y_true))
    return Evaluation(metrics=m, summary={**summary(m), "predicted_rows": len(predictions)}, prediction_rows=rows)
