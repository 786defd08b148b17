"""Vertex AI AutoML Image batch-prediction output → Labelbox prediction rows.

Batch prediction writes JSON lines `{"instance": {"content": "gs://…", "mimeType"}, "prediction":
{"ids", "displayNames", "confidences", "bboxes"?}}`. Classification display names are
`<question>_<answer>` (the names lbtrain gives the AutoML dataset's labels); detection display
names are class names and each box is normalized `[xMin, xMax, yMin, yMax]` (Vertex's order).
Pure functions: the caller maps each instance URI to its data row (id, width, height), which it
knows because it wrote the import file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RowInfo:
    data_row_id: str
    width: int = 0
    height: int = 0


class AutoMLOutputError(ValueError):
    pass


def read_jsonl(lines: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AutoMLOutputError(f"batch prediction line {n} is not JSON: {exc}") from None
    return out


def split_display_name(name: str, questions: Sequence[str]) -> tuple[str, str]:
    """`<question>_<answer>` → (question, answer); the longest known question prefix wins, so
    questions and answers may both contain underscores."""
    for question in sorted(questions, key=len, reverse=True):
        if name.startswith(question + "_"):
            return question, name[len(question) + 1:]
    if "_" not in name:
        raise AutoMLOutputError(f"display name {name!r} is not <question>_<answer>")
    question, answer = name.rsplit("_", 1)
    return question, answer


def _prediction(record: Mapping[str, Any]) -> tuple[str, list[str], list[float], list[Any]]:
    try:
        uri = record["instance"]["content"]
        pred = record["prediction"]
        names, confidences = list(pred["displayNames"]), [float(c) for c in pred["confidences"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise AutoMLOutputError(f"unexpected batch prediction record: missing {exc}") from None
    if len(names) != len(confidences):
        raise AutoMLOutputError(f"{uri}: {len(names)} displayNames but {len(confidences)} confidences")
    return uri, names, confidences, list(pred.get("bboxes") or [])


def classification_rows(records: Iterable[Mapping[str, Any]], rows: Mapping[str, RowInfo],
                        questions: Sequence[str], *, multi_label: bool = False,
                        threshold: float = 0.5) -> tuple[list[dict[str, Any]], list[str]]:
    """Radio rows (top answer per question) or, multi-label, checklist rows (answers over the
    threshold). Returns (rows, URIs that match no data row)."""
    out: list[dict[str, Any]] = []
    unknown: list[str] = []
    for record in records:
        uri, names, confidences, _ = _prediction(record)
        info = rows.get(uri)
        if info is None:
            unknown.append(uri)
            continue
        by_question: dict[str, list[tuple[str, float]]] = {}
        for name, conf in zip(names, confidences, strict=True):
            question, answer = split_display_name(name, questions)
            by_question.setdefault(question, []).append((answer, conf))
        for question, answers in sorted(by_question.items()):
            answers.sort(key=lambda a: -a[1])
            if multi_label:
                chosen = [{"name": a, "confidence": round(c, 6)} for a, c in answers if c >= threshold]
                out.append({"name": question, "answer": chosen, "dataRow": {"id": info.data_row_id}})
            else:
                best, conf = answers[0]
                out.append({"name": question, "answer": {"name": best, "confidence": round(conf, 6)},
                            "dataRow": {"id": info.data_row_id}})
    return out, unknown


def box_rows(records: Iterable[Mapping[str, Any]], rows: Mapping[str, RowInfo], *,
             min_confidence: float = 0.3) -> tuple[list[dict[str, Any]], list[str]]:
    """Rectangle rows in pixels (Labelbox top/left/height/width), score-filtered."""
    out: list[dict[str, Any]] = []
    unknown: list[str] = []
    for record in records:
        uri, names, confidences, boxes = _prediction(record)
        info = rows.get(uri)
        if info is None:
            unknown.append(uri)
            continue
        if len(boxes) != len(names):
            raise AutoMLOutputError(f"{uri}: {len(names)} displayNames but {len(boxes)} bboxes")
        if not (info.width and info.height):
            raise AutoMLOutputError(f"{uri}: image size unknown, cannot convert normalized boxes to pixels")
        for name, conf, box in zip(names, confidences, boxes, strict=True):
            if conf < min_confidence:
                continue
            x_min, x_max, y_min, y_max = (min(max(float(v), 0.0), 1.0) for v in box)
            if x_max <= x_min or y_max <= y_min:
                continue
            out.append({
                "name": name,
                "confidence": round(conf, 6),
                "bbox": {"top": round(y_min * info.height, 2), "left": round(x_min * info.width, 2),
                         "height": round((y_max - y_min) * info.height, 2),
                         "width": round((x_max - x_min) * info.width, 2)},
                "dataRow": {"id": info.data_row_id},
            })
    return out, unknown
