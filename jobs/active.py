"""Which unlabeled rows teach the next model the most, and which predictions are sure enough to pre-label.

Pure functions on the predictions the task predictors already return (`jobs/tasks/*`: `scores` per
class for the classifiers, `boxes` / `entities` with a confidence each), shared by the prelabel step and
bench/active_learning.py, so the bench measures exactly what the product does.

- `uncertainty`: 1 is "no idea", 0 is "certain". Single-label: 1 − the margin between the two most
  likely classes. Multi-label: 1 − 2·(distance of the class closest to its threshold), so a class sitting
  on its threshold makes the row maximally uncertain. Boxes and entities: 1 − the confidence of the least
  confident kept detection; a row where nothing was found is 1 (the model cannot tell what is there).
- `queue_order`: most uncertain first, with a share of random picks interleaved at regular places so the
  labeled sample stays representative (uncertainty sampling alone over-samples the class boundary).
- `prelabel_annotations`: Labelbox annotation-import rows (radio, checklist as an `answer` list, bbox, NER span with an
  inclusive `end`) for the predictions at or above a per-class confidence threshold; ids are derived from
  the run and row, so an import retried after a lost answer carries the same annotations.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

SINGLE_LABEL = frozenset({"image_single_classification", "text_single_classification"})
MULTI_LABEL = frozenset({"image_multi_classification", "text_multi_classification"})
DETECTIONS = {"bounding_box": "boxes", "ner": "entities"}
NAMESPACE = uuid.UUID("6f1b2a4e-3c2d-4b8e-9a51-0d7c9e4f1a23")  # lbtrain pre-label annotation ids


def _threshold(thresholds: Mapping[str, float] | float, name: str, default: float = 0.5) -> float:
    if isinstance(thresholds, Mapping):
        return float(thresholds.get(name, thresholds.get("*", default)))
    return float(thresholds)


def uncertainty(model_type: str, prediction: Mapping[str, Any], thresholds: Mapping[str, float] | float = 0.5) -> float:
    """How unsure the model is about one row, in [0, 1] (see the module docstring)."""
    if model_type in SINGLE_LABEL:
        top = sorted((float(v) for v in (prediction.get("scores") or {}).values()), reverse=True)
        if not top:
            return 1.0
        return 1.0 - (top[0] - (top[1] if len(top) > 1 else 0.0))
    if model_type in MULTI_LABEL:
        scores = prediction.get("scores") or {}
        if not scores:
            return 1.0
        closest = min(abs(float(p) - _threshold(thresholds, c)) for c, p in scores.items())
        return max(0.0, 1.0 - 2.0 * closest)
    if model_type in DETECTIONS:
        found = prediction.get(DETECTIONS[model_type]) or []
        if not found:
            return 1.0
        return 1.0 - min(float(d.get("confidence", 0.0)) for d in found)
    raise ValueError(f"no uncertainty measure for model type {model_type!r}")


def queue_order(scores: Mapping[str, float], random_share: float = 0.1, seed: str = "") -> list[str]:
    """Data row ids in labeling order: most uncertain first (ties by id), and every 1/random_share-th
    place a row drawn at random from the rest. Deterministic for a seed."""
    if not 0.0 <= random_share <= 1.0:
        raise ValueError(f"random_share must be within [0, 1], not {random_share}")
    by_uncertainty = sorted(scores, key=lambda r: (-scores[r], r))
    if random_share == 0.0 or len(by_uncertainty) < 2:
        return by_uncertainty
    rng = random.Random(hashlib.sha256(seed.encode()).hexdigest())
    every = max(1, round(1.0 / random_share))
    remaining = list(by_uncertainty)
    taken: set[str] = set()
    order: list[str] = []
    head = 0
    while len(order) < len(by_uncertainty):
        if (len(order) + 1) % every == 0:
            pick = remaining[rng.randrange(len(remaining))]
        else:
            while by_uncertainty[head] in taken:
                head += 1
            pick = by_uncertainty[head]
        taken.add(pick)
        remaining.remove(pick)
        order.append(pick)
    return order


def priorities(order: Sequence[str], start: int = 1) -> list[tuple[str, int]]:
    """(data row id, queue priority) with Labelbox's convention: a lower number is labeled first."""
    return [(row, start + i) for i, row in enumerate(order)]


def annotation_id(run_id: str, data_row_id: str, index: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{run_id}/{data_row_id}/{index}"))


def prelabel_annotations(model_type: str, run_id: str, data_row_id: str, prediction: Mapping[str, Any], *,
                         question: str = "", min_confidence: Mapping[str, float] | float = 0.5,
                         thresholds: Mapping[str, float] | float = 0.5, text: str = "",
                         utf16: bool = False) -> list[dict[str, Any]]:
    """Labelbox annotation-import rows for one data row's prediction; [] when nothing is sure enough.

    `question` names the radio / checklist classification; `min_confidence` is the per-class (or one)
    confidence below which nothing is pre-labeled; `thresholds` are a multi-label model's own decision
    thresholds (a class is pre-labeled only when chosen by the model and confident enough). NER spans
    are the predictor's code-point offsets, given in UTF-16 code units of `text` when `utf16` (as the
    model run's labels were).
    """
    rows: list[dict[str, Any]] = []

    def add(body: dict[str, Any]) -> None:
        rows.append({"uuid": annotation_id(run_id, data_row_id, len(rows)), "dataRow": {"id": data_row_id}, **body})

    if model_type in SINGLE_LABEL:
        scores = prediction.get("scores") or {}
        if scores:
            best = max(scores, key=lambda c: (float(scores[c]), c))
            if float(scores[best]) >= _threshold(min_confidence, best):
                add({"name": question, "answer": {"name": best}})
    elif model_type in MULTI_LABEL:
        scores = prediction.get("scores") or {}
        chosen = [c for c in (prediction.get("labels") or []) if c in scores]
        sure = [c for c in chosen if float(scores[c]) >= max(_threshold(min_confidence, c), _threshold(thresholds, c))]
        if sure:
            add({"name": question, "answer": [{"name": c} for c in sorted(sure)]})
    elif model_type == "bounding_box":
        for box in prediction.get("boxes") or []:
            if float(box.get("confidence", 0.0)) >= _threshold(min_confidence, box["name"]):
                add({"name": box["name"], "bbox": dict(box["bbox"])})
    elif model_type == "ner":
        for ent in prediction.get("entities") or []:
            if float(ent.get("confidence", 0.0)) >= _threshold(min_confidence, ent["type"]):
                start, end = int(ent["start"]), int(ent["end"])
                if utf16:
                    from jobs.tasks.ner import cp_to_utf16

                    start, end = cp_to_utf16(text, start), cp_to_utf16(text, end + 1) - 1
                add({"name": ent["type"], "location": {"start": start, "end": end}})
    else:
        raise ValueError(f"no pre-label format for model type {model_type!r}")
    return rows
