"""Box metrics in pure numpy: IoU, greedy matching at an IoU threshold, AP per class and mAP@0.5.

Kept free of torch so evaluate's numbers do not depend on the detector's code, and so the
hand-computed cases in the tests pin the definition down.

Conventions: a box is (x1, y1, x2, y2) in pixels. AP is the area under the all-point
interpolated precision/recall curve (PASCAL VOC 2010+), detections of one class over all images
ranked by score, each matched greedily (highest score first) to the unmatched ground truth box of
the same class with the highest IoU ≥ the threshold; a second detection of a matched box is a
false positive. A class with no ground truth box in the scored images has AP None and is left out
of mAP (COCO does the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Box = Sequence[float]  # x1, y1, x2, y2


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """IoU of every box in `a` (N×4) with every box in `b` (M×4) → N×M."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou(a: Box, b: Box) -> float:
    return float(iou_matrix([a], [b])[0, 0])


def match(gt: Any, pred: Any, scores: Any, iou_threshold: float = 0.5) -> tuple[np.ndarray, int]:
    """Greedy matching of one class in one image: (is_tp per prediction in the given order, matched gt)."""
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.zeros(len(pred), dtype=bool)
    if not len(pred) or not len(gt):
        return is_tp, 0
    ious = iou_matrix(pred, gt)
    taken = np.zeros(len(gt), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        candidates = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_threshold:
            taken[j] = True
            is_tp[i] = True
    return is_tp, int(taken.sum())


def average_precision(scores: Any, is_tp: Any, n_gt: int) -> float | None:
    """All-point interpolated AP from every detection's score and TP flag; None if n_gt == 0."""
    if n_gt <= 0:
        return None
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.asarray(is_tp, dtype=np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1.0 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _by_class(items: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for it in items:
        out.setdefault(str(it["name"]), []).append(it)
    return out


def image_counts(
    gt: Sequence[Mapping[str, Any]], pred: Sequence[Mapping[str, Any]], iou_threshold: float = 0.5
) -> dict[str, dict[str, Any]]:
    """Per class in one image: TP/FP/FN counts, plus per prediction (score, is_tp) for AP.

    `gt` items: {"name", "box"}; `pred` items: {"name", "box", "score"}.
    """
    g, p = _by_class(gt), _by_class(pred)
    out: dict[str, dict[str, Any]] = {}
    for cls in sorted(set(g) | set(p)):
        gb = [x["box"] for x in g.get(cls, [])]
        pb = [x["box"] for x in p.get(cls, [])]
        ps = [float(x["score"]) for x in p.get(cls, [])]
        is_tp, matched = match(gb, pb, ps, iou_threshold)
        out[cls] = {
            "tp": int(is_tp.sum()),
            "fp": int(len(pb) - is_tp.sum()),
            "fn": int(len(gb) - matched),
            "gt": len(gb),
            "scores": ps,
            "is_tp": is_tp.tolist(),
        }
    return out


def detection_metrics(
    images: Sequence[tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]],
    classes: Sequence[str],
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """(gt, pred) per image → {"map50", "per_class": {cls: {"ap50", "gt", "detections", "tp", "fp", "fn"}}}.

    Every class of `classes` is reported; classes predicted but unknown are ignored. TP/FP/FN are
    counts over all detections given (pass them score-filtered if the counts should mean that).
    """
    acc = {c: {"scores": [], "is_tp": [], "gt": 0, "tp": 0, "fp": 0, "fn": 0} for c in classes}
    for gt, pred in images:
        for cls, c in image_counts(gt, pred, iou_threshold).items():
            if cls not in acc:
                continue
            a = acc[cls]
            a["scores"].extend(c["scores"])
            a["is_tp"].extend(c["is_tp"])
            for k in ("gt", "tp", "fp", "fn"):
                a[k] += c[k]
    per_class: dict[str, dict[str, Any]] = {}
    aps: list[float] = []
    for cls in classes:
        a = acc[cls]
        ap = average_precision(a["scores"], a["is_tp"], a["gt"])
        if ap is not None:
            aps.append(ap)
        per_class[cls] = {
            "ap50": None if ap is None else round(ap, 4),
            "gt": a["gt"],
            "detections": len(a["scores"]),
            "tp": a["tp"],
            "fp": a["fp"],
            "fn": a["fn"],
        }
    return {
        "map50": round(float(np.mean(aps)), 4) if aps else 0.0,
        "classes_scored": len(aps),
        "per_class": per_class,
    }
