"""Images with rectangles (Export v2 `ImageBoundingBox` objects): a CenterNet-style detector
(jobs/tasks/detector.py), scored with mAP@0.5 (jobs/tasks/box_metrics.py). docs/architecture.md §3–§4.

ETL decisions (also written to stats.json so nothing is dropped silently):
  - the boxes of a data row are the rectangles of its first label in the model run (later labels
    are counted under notes.multiple_labels); nested classifications on objects are ignored;
  - a box is clipped to the image (size from media_attributes, else the image header); one with no
    area left is dropped and counted (notes.degenerate_boxes), a clipped one is counted too;
  - a label with no rectangle at all on an assigned split is a real example with zero boxes (an
    image a labeler saw and found empty: it teaches the detector what background looks like),
    unless the label has other objects (polygons, points...): then it is predict-only
    ("no_boxes"), because its objects would wrongly become background;
  - rows without a label or without a usable split are predict-only (counted and named in
    `skipped`); rows whose image cannot be fetched cannot be predicted either (`fetch_failed`).

Run params understood (all optional):
  epochs (20), batch_size (32), lr (0.002, peak of a warm-up + cosine schedule), input_size (128,
  multiple of 16), width (32, channels of the first level), seed (0), threads (torch threads;
  default min(2, cpus)), max_seconds (240: training stops at the first step past it and the
  learning-rate schedule runs on max(step, time) progress, so a busy machine still ends with an
  annealed model inside the stage's 5-minute budget; only then is the run not bit-reproducible,
  `stopped_early` says so), augment (true: random shifts that keep every box inside the image),
  hflip (false: digits and text must not be mirrored), score_threshold (0.3: boxes uploaded to
  Labelbox, served, and counted in the confusion rows; mAP uses every detection ≥ 0.01).
torch, numpy and PIL are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jobs.tasks import classification, exportv2, images
from jobs.tasks.base import (
    MODEL_META_FILE,
    SPLITS,
    Dataset,
    DatasetError,
    Evaluation,
    ParamError,
    Progress,
    Task,
    model_file,
    verify_digest,
)
from lbtrain import storage
from lbtrain.progress import report

MODEL_TYPE = "bounding_box"
MODEL_FILE = "model.pt"
BOX_KIND = "ImageBoundingBox"
CONFUSION_METRIC_NAME = "50%_iou"  # as in fixtures/labelbox/custom_confusion_matrix_import.json
IOU_THRESHOLD = 0.5
EVAL_MIN_SCORE = 0.01  # detections kept for the AP curve (AP needs the low-score tail)
MAX_DETECTIONS = 100

_INT_PARAMS = {"epochs": (20, 1), "batch_size": (32, 1), "input_size": (128, 32), "width": (32, 8), "seed": (0, 0)}
_FLOAT_PARAMS = {"lr": (0.002, 1e-6), "max_seconds": (240.0, 1.0)}


# --- params -------------------------------------------------------------------------------


def train_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the run params this task reads; a bad value is a ParamError naming the param."""
    out: dict[str, Any] = {}
    for name, (default, low) in _INT_PARAMS.items():
        value = params.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ParamError(f"param {name} must be an integer >= {low}, not {value!r}")
        out[name] = value
    if out["input_size"] % 16:
        raise ParamError(f"param input_size must be a multiple of 16, not {out['input_size']}")
    for name, (default, low) in _FLOAT_PARAMS.items():
        value = params.get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < low:
            raise ParamError(f"param {name} must be a number >= {low}, not {value!r}")
        out[name] = float(value)
    threads = params.get("threads", max(1, min(2, os.cpu_count() or 1)))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ParamError(f"param threads must be a positive integer, not {threads!r}")
    out["threads"] = threads
    for name, default in (("augment", True), ("hflip", False)):
        value = params.get(name, default)
        if not isinstance(value, bool):
            raise ParamError(f"param {name} must be true or false, not {value!r}")
        out[name] = value
    out["score_threshold"] = score_threshold(params.get("score_threshold", 0.3))
    return out


def score_threshold(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ParamError(f"param score_threshold must be a number in [0, 1], not {value!r}")
    return float(value)


# --- boxes ----------------------------------------------------------------------------------


def clip_box(bbox: Any, width: int, height: int) -> tuple[dict[str, float] | None, bool]:
    """Labelbox {top, left, height, width} → (clipped box or None if no area is left, was clipped)."""
    try:
        top, left = float(bbox["top"]), float(bbox["left"])
        h, w = float(bbox["height"]), float(bbox["width"])
    except (KeyError, TypeError, ValueError):
        return None, False
    x1, y1, x2, y2 = left, top, left + w, top + h
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if not (cx2 > cx1 and cy2 > cy1):
        return None, False
    clipped = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    return {"top": cy1, "left": cx1, "height": cy2 - cy1, "width": cx2 - cx1}, clipped


def label_boxes(label: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The rectangles of one label as [{"name", "bbox"}] (raw), and how many other objects it has."""
    objects = (label.get("annotations") or {}).get("objects") or []
    boxes, other = [], 0
    for obj in objects:
        if not isinstance(obj, Mapping):
            continue
        bbox = obj.get("bounding_box")
        kind = obj.get("annotation_kind")
        if isinstance(bbox, Mapping) and kind in (None, BOX_KIND) and (obj.get("name") or obj.get("value")):
            boxes.append({"name": str(obj.get("name") or obj.get("value")), "bbox": bbox})
        else:
            other += 1
    return boxes, other


def xyxy(b: Mapping[str, Any]) -> tuple[float, float, float, float]:
    return (b["left"], b["top"], b["left"] + b["width"], b["top"] + b["height"])


def box_row(name: str, data_row_id: str, k: int, confidence: float, x1: float, y1: float, x2: float, y2: float,
            ) -> dict[str, Any]:
    """A rectangle prediction (fixtures/labelbox/rectangle_import.json) in image pixels."""
    return {
        "uuid": classification.row_uuid("bbox", data_row_id, str(k)),
        "name": name,
        "confidence": round(min(max(float(confidence), 0.0), 1.0), 6),
        "bbox": {
            "top": round(y1, 2),
            "left": round(x1, 2),
            "height": round(y2 - y1, 2),
            "width": round(x2 - x1, 2),
        },
        "dataRow": {"id": data_row_id},
    }


def confusion_rows(data_row_id: str, counts: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    """CONFUSION_MATRIX rows [TP, FP, TN, FN] at IoU 0.5, one per class present in the row's ground
    truth or predictions (TN is 0: there are no countable true negative boxes, as in Labelbox's own
    object metrics)."""
    return [
        {
            "uuid": classification.row_uuid("metric", CONFUSION_METRIC_NAME, cls, data_row_id),
            "dataRow": {"id": data_row_id},
            "metricValue": [int(c["tp"]), int(c["fp"]), 0, int(c["fn"])],
            "featureName": cls,
            "metricName": CONFUSION_METRIC_NAME,
            "aggregation": "CONFUSION_MATRIX",
        }
        for cls, c in sorted(counts.items())
    ]


# --- the predictor --------------------------------------------------------------------------


class BoxPredictor:
    """A loaded detector. Rows: {"image": uri} or {"array": uint8 array}, optional width/height
    (the pixel frame Labelbox boxes use; default: the image's own size)."""

    def __init__(self, model: Any, meta: dict[str, Any]):
        self.model = model
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.input_size = int(meta["input_size"])
        self.mode = "L" if int(meta.get("channels", 1)) == 1 else "RGB"
        self.score_threshold = float(meta.get("score_threshold", 0.3))

    def _inputs(self, rows: Sequence[Mapping[str, Any]]) -> tuple[Any, list[tuple[float, float]]]:
        import numpy as np
        from PIL import Image

        arrays, sizes = [], []
        for r in rows:
            arr = r["array"] if r.get("array") is not None else images.load_image(r["image"], mode=self.mode)
            h, w = arr.shape[:2]
            sizes.append((float(r.get("width") or w), float(r.get("height") or h)))
            if (w, h) != (self.input_size, self.input_size):
                arr = np.asarray(
                    Image.fromarray(arr).resize((self.input_size, self.input_size), Image.Resampling.BILINEAR)
                )
            arrays.append(arr)
        return to_tensor(np.stack(arrays)) if arrays else None, sizes

    def detect(self, rows: Sequence[Mapping[str, Any]], min_score: float, batch: int = 64) -> list[list[dict]]:
        """Every detection ≥ min_score per row: {"name", "score", "box": (x1, y1, x2, y2) image px}."""
        import torch

        from jobs.tasks import detector

        out: list[list[dict]] = []
        self.model.eval()
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            x, sizes = self._inputs(chunk)
            with torch.no_grad():
                decoded = detector.decode(self.model(x), top_k=MAX_DETECTIONS, min_score=min_score)
            for dets, (w, h) in zip(decoded, sizes, strict=True):
                sx, sy = w / self.input_size, h / self.input_size
                found = []
                for c, s, x1, y1, x2, y2 in dets:
                    box = (
                        min(max(x1 * sx, 0.0), w),
                        min(max(y1 * sy, 0.0), h),
                        min(max(x2 * sx, 0.0), w),
                        min(max(y2 * sy, 0.0), h),
                    )
                    if box[2] > box[0] and box[3] > box[1]:
                        found.append({"name": self.classes[c], "score": s, "box": box})
                out.append(found)
        return out

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Score-filtered boxes in image pixels, Labelbox's bbox shape, best first."""
        result = []
        for dets in self.detect(rows, self.score_threshold):
            boxes = []
            for d in dets:
                x1, y1, x2, y2 = d["box"]
                boxes.append(
                    {
                        "name": d["name"],
                        "confidence": round(d["score"], 6),
                        "bbox": {
                            "top": round(y1, 2),
                            "left": round(x1, 2),
                            "height": round(y2 - y1, 2),
                            "width": round(x2 - x1, 2),
                        },
                    }
                )
            result.append({"boxes": boxes})
        return result

    def parse_instances(self, instances: Sequence[Any]) -> list[dict[str, Any]]:
        """Vertex image instances: {"b64": ...}, {"image": {"b64": ...}}, {"content": ...} or a string."""
        rows = []
        for i, inst in enumerate(instances):
            try:
                rows.append({"array": images.decode_b64(images.instance_b64(inst), mode=self.mode)})
            except ValueError as exc:
                raise ValueError(f"instance {i}: {exc}") from None
        return rows


def to_tensor(batch: Any) -> Any:
    """uint8 N×H×W(×C) → float N×C×H×W in [0, 1]."""
    import torch

    t = torch.from_numpy(batch).float().div_(255.0)
    return t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()


# --- training helpers -------------------------------------------------------------------------


def _load_split(
    examples: Sequence[Mapping[str, Any]], classes: Sequence[str], size: int, mode: str
) -> tuple[Any, list[list[tuple[float, ...]]], list[list[int]]]:
    """Images resized to size² (uint8) and their boxes in input pixels with class indices."""
    import numpy as np

    index = {c: i for i, c in enumerate(classes)}
    arrays = images.load_images([e["image"] for e in examples], size=(size, size), mode=mode)
    boxes, labels = [], []
    for e in examples:
        sx, sy = size / float(e["width"]), size / float(e["height"])
        bs, ls = [], []
        for b in e["boxes"]:
            if b["name"] in index:
                x1, y1, x2, y2 = xyxy(b)
                bs.append((x1 * sx, y1 * sy, x2 * sx, y2 * sy))
                ls.append(index[b["name"]])
        boxes.append(bs)
        labels.append(ls)
    return np.stack(arrays), boxes, labels


def _is_gray(examples: Sequence[Mapping[str, Any]], limit: int = 200) -> bool:
    """Whether the training images are grayscale (then the detector takes one channel)."""
    import numpy as np

    for e in examples[:limit]:
        a = images.load_image(e["image"], mode="RGB")
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])):
            return False
    return True


def _augment(img: Any, boxes: list[tuple[float, ...]], rng: Any, hflip: bool, max_shift: int = 16) -> tuple:
    """A random integer shift that keeps every box inside the image (and an optional mirror)."""
    import numpy as np

    h, w = img.shape[:2]
    if boxes:
        b = np.asarray(boxes)
        lo_x, hi_x = -int(np.floor(b[:, 0].min())), int(np.floor(w - b[:, 2].max()))
        lo_y, hi_y = -int(np.floor(b[:, 1].min())), int(np.floor(h - b[:, 3].max()))
    else:
        lo_x = lo_y = -max_shift
        hi_x = hi_y = max_shift
    dx = int(rng.integers(max(lo_x, -max_shift), max(min(hi_x, max_shift), max(lo_x, -max_shift)) + 1))
    dy = int(rng.integers(max(lo_y, -max_shift), max(min(hi_y, max_shift), max(lo_y, -max_shift)) + 1))
    out = np.zeros_like(img)
    ys, yd = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy)))
    xs, xd = (slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx)))
    out[yd, xd] = img[ys, xs]
    moved = [(x1 + dx, y1 + dy, x2 + dx, y2 + dy) for x1, y1, x2, y2 in boxes]
    if hflip and rng.random() < 0.5:
        out = out[:, ::-1].copy()
        moved = [(w - x2, y1, w - x1, y2) for x1, y1, x2, y2 in moved]
    return out, moved


def _val_map(model: Any, x_val: Any, gts: list[list[dict]], classes: Sequence[str]) -> float:
    import torch

    from jobs.tasks import box_metrics, detector

    model.eval()
    pairs = []
    with torch.no_grad():
        for start in range(0, len(x_val), 64):
            decoded = detector.decode(model(to_tensor(x_val[start : start + 64])), MAX_DETECTIONS, EVAL_MIN_SCORE)
            for dets, gt in zip(decoded, gts[start : start + 64], strict=True):
                preds = [{"name": classes[c], "score": s, "box": (x1, y1, x2, y2)} for c, s, x1, y1, x2, y2 in dets]
                pairs.append((gt, preds))
    model.train()
    return float(box_metrics.detection_metrics(pairs, classes, IOU_THRESHOLD)["map50"])


def lr_at(base: float, step_fraction: float, time_fraction: float, warmup: float = 0.05) -> float:
    """Warm-up then cosine decay over training progress = the larger of the step and time fractions,
    so a run slowed down by a busy machine still anneals before the time budget ends (when the time
    budget does not bind, the schedule depends on the step only and the run is reproducible)."""
    progress = min(max(step_fraction, time_fraction), 1.0)
    if progress < warmup:
        return base * (0.1 + 0.9 * progress / warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))))


# --- the task ---------------------------------------------------------------------------------


class BoundingBox(Task):
    model_type = MODEL_TYPE

    def convert(
        self,
        rows: Iterable[Mapping[str, Any]],
        model_run_id: str,
        params: Mapping[str, Any],
        out_uri: str,
        progress: Progress,
    ) -> Dataset:
        rows = exportv2.reiterable(rows)
        exportv2.require_rows_in_run(rows, model_run_id)
        skipped = exportv2.SkipLog()
        notes = exportv2.SkipLog()
        seen: set[str] = set()
        todo: list[tuple[exportv2.RowRef, images.MediaRef]] = []
        for row in rows:
            ref = exportv2.row_ref(row, model_run_id)
            if ref.run is None:
                skipped.add("not_in_model_run", ref.data_row_id)
                continue
            if not ref.data_row_id:
                skipped.add("no_data_row_id", ref.global_key or "?")
                continue
            if ref.data_row_id in seen:
                skipped.add("duplicate_data_row", ref.data_row_id)
                continue
            seen.add(ref.data_row_id)
            media = images.media_ref(row, ref.data_row_id)
            if media is None:
                skipped.add("no_media", ref.data_row_id)
                continue
            todo.append((ref, media))
        if not todo and not seen:
            raise DatasetError(
                f"none of the {len(rows)} exported data rows belongs to model run {model_run_id!r}"
            )
        progress(f"fetching {len(todo)} images", images=len(todo))
        fetched = images.fetch_media([m for _, m in todo], out_uri, progress=progress)

        examples: list[dict[str, Any]] = []
        predict_only: list[dict[str, Any]] = []
        for (ref, _), media in zip(todo, fetched, strict=True):
            if isinstance(media, images.FetchError):
                skipped.add(media.reason, ref.data_row_id)
                continue
            row: dict[str, Any] = {
                "data_row_id": ref.data_row_id,
                "image": media.local_uri,
                "source": media.uri,
                "width": media.width,
                "height": media.height,
            }
            if ref.global_key:
                row["global_key"] = ref.global_key
            labels = exportv2.run_labels(ref.run)
            if len(labels) > 1:
                notes.add("multiple_labels", ref.data_row_id)  # the first label wins
            raw, other = label_boxes(labels[0]) if labels else ([], 0)
            boxes = []
            for b in raw:
                clipped, was_clipped = clip_box(b["bbox"], media.width, media.height)
                if clipped is None:
                    notes.add("degenerate_boxes", ref.data_row_id)
                    continue
                if was_clipped:
                    notes.add("clipped_boxes", ref.data_row_id)
                boxes.append({"name": b["name"], **{k: round(v, 3) for k, v in clipped.items()}})
            if other:
                notes.add("non_box_objects", ref.data_row_id)
            split, reason = exportv2.parse_split((ref.run or {}).get("split"))
            if not labels:
                reason = "no_label"
            elif not raw and other:
                reason = "no_boxes"
            row["split"] = split or "unassigned"
            row["boxes"] = boxes
            if reason:
                skipped.add(reason, ref.data_row_id)
                predict_only.append({**row, "reason": reason})
            else:
                examples.append(row)

        classes = sorted({b["name"] for e in examples for b in e["boxes"]})
        per_class = {c: {s: 0 for s in SPLITS} for c in classes}
        for e in examples:
            for b in e["boxes"]:
                per_class[b["name"]][e["split"]] += 1
        stats = {
            "model_run_id": model_run_id,
            "rows": len(rows),
            "examples": len(examples),
            "per_split": {s: sum(1 for e in examples if e["split"] == s) for s in SPLITS},
            "boxes": sum(len(e["boxes"]) for e in examples),
            "per_class": per_class,
            "images_without_boxes": {s: sum(1 for e in examples if e["split"] == s and not e["boxes"]) for s in SPLITS},
            "predict_only": len(predict_only),
            "skipped": skipped.as_dict(),
            "notes": notes.as_dict(),
            "media": images.fetch_stats(fetched),
        }
        progress(
            f"converted {len(rows)} rows: {len(examples)} examples with {stats['boxes']} boxes, "
            f"{len(predict_only)} predict-only, {skipped.total()} not used for training",
            examples=len(examples),
            boxes=stats["boxes"],
        )
        return Dataset(
            examples=examples,
            label_map={"classes": classes, "kind": "bounding_box"},
            stats=stats,
            predict_only=predict_only,
        )

    def validate(self, dataset: Dataset, min_examples: Mapping[str, int]) -> None:
        """Each class needs min_examples[split] *boxes* in every split (at least one class)."""
        where = f" in model run {dataset.stats.get('model_run_id', '')!r}"
        if not dataset.examples:
            skipped = dataset.stats.get("skipped", {})
            why = ", ".join(f"{v['count']} {k}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]["count"]))
            why = f" (rows skipped: {why})" if why else ""
            raise DatasetError(f"no labeled images with a train/validation/test split{where}{why}")
        classes = dataset.label_map.get("classes", [])
        if not classes:
            raise DatasetError(f"no rectangles (bounding boxes) in the labels{where}")
        counts = {(c, s): 0 for c in classes for s in SPLITS}
        for e in dataset.examples:
            for b in e["boxes"]:
                if (b["name"], e["split"]) in counts:
                    counts[(b["name"], e["split"])] += 1
        problems = [
            (c, s, counts[(c, s)], min_examples.get(s, 1))
            for s in SPLITS
            for c in classes
            if counts[(c, s)] < min_examples.get(s, 1)
        ]
        if problems:
            c, s, n, need = problems[0]
            extra = len(problems) - 1
            more = f"; {extra} more class/split pair{'s are' if extra > 1 else ' is'} also too small" if extra else ""
            raise DatasetError(f'too few boxes: class "{c}" has {n} in split "{s}" (minimum {need}){more}')

    def etl_summary(self, dataset: Dataset) -> dict[str, Any]:
        notes = dataset.stats.get("notes", {})
        return {
            **super().etl_summary(dataset),
            "classes": len(dataset.label_map.get("classes", [])),
            "boxes": dataset.stats.get("boxes", 0),
            "degenerate_boxes": notes.get("degenerate_boxes", {}).get("count", 0),
            "clipped_boxes": notes.get("clipped_boxes", {}).get("count", 0),
            "fetch_failed": dataset.stats.get("media", {}).get("failed", 0),
        }

    def train(
        self, dataset: Dataset, model_dir: str, params: Mapping[str, Any], progress: Progress
    ) -> dict[str, Any]:
        # OpenMP threads that spin while waiting cost 3-4x wall time when other processes share the
        # cores (measured here: 1.7 s/step spinning vs 0.6 s passive, 2 threads, 3 trainers on 2 cores).
        # Read by libgomp when torch loads, so it only takes effect if torch is not imported yet.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import numpy as np
        import torch

        from jobs.tasks import detector

        cfg = train_params(params)
        started = time.monotonic()
        torch.set_num_threads(cfg["threads"])
        torch.manual_seed(cfg["seed"])
        rng = np.random.default_rng(cfg["seed"])
        train, val = dataset.train_validation()
        classes = list(dataset.label_map["classes"])
        size = cfg["input_size"]
        channels = 1 if _is_gray(train) else 3
        mode = "L" if channels == 1 else "RGB"
        x_train, b_train, l_train = _load_split(train, classes, size, mode)
        x_val, b_val, l_val = _load_split(val, classes, size, mode) if val else (None, [], [])
        val_gt = [
            [{"name": classes[c], "box": b} for b, c in zip(bs, ls, strict=True)]
            for bs, ls in zip(b_val, l_val, strict=True)
        ]
        progress(
            f"training on {len(train)} images ({sum(map(len, b_train))} boxes), {len(val)} validation, "
            f"{len(classes)} classes, {channels} channel(s), {cfg['threads']} thread(s)",
            train_size=len(train),
            validation_size=len(val),
        )
        model = detector.CenterNet(len(classes), channels, cfg["width"])
        steps_per_epoch = max(1, -(-len(train) // cfg["batch_size"]))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
        total_steps = cfg["epochs"] * steps_per_epoch
        step = 0
        best_map, best_epoch, best_state = -1.0, 0, None
        history = []
        epochs_run, stopped_early = 0, False
        report(progress, f"training {cfg['epochs']} epochs", unit="epoch", done=0, total=cfg["epochs"],
               metric="map50")
        model.train()
        for epoch in range(1, cfg["epochs"] + 1):
            order = rng.permutation(len(train))
            total = 0.0
            seen = 0
            for start in range(0, len(order), cfg["batch_size"]):
                elapsed = time.monotonic() - started
                if elapsed > cfg["max_seconds"]:
                    stopped_early = True
                    break
                idx = order[start : start + cfg["batch_size"]]
                imgs, targets = [], []
                for i in idx:
                    img, bs = x_train[i], b_train[i]
                    if cfg["augment"]:
                        img, bs = _augment(img, bs, rng, cfg["hflip"])
                    imgs.append(img)
                    targets.append(detector.make_targets(bs, l_train[i], len(classes), size))
                t = {k: torch.from_numpy(np.stack([tt[k] for tt in targets])) for k in targets[0]}
                loss, _ = detector.loss(model(to_tensor(np.stack(imgs))), t)
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg["lr"], step / total_steps, elapsed / cfg["max_seconds"])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                total += loss.item() * len(idx)
                seen += len(idx)
            if not seen:
                report(progress, f"stopped before epoch {epoch}: the {cfg['max_seconds']:.0f}s training budget is used",
                       unit="epoch", done=epochs_run, total=epochs_run, metric="map50",
                       loss=history[-1]["loss"] if history else None,
                       value=history[-1]["val_map50"] if history else None,
                       note=f"stopped: the {cfg['max_seconds']:.0f}s training budget is used")
                break
            epochs_run = epoch
            val_map = _val_map(model, x_val, val_gt, classes) if val else None
            history.append({"epoch": epoch, "loss": round(total / seen, 4), "val_map50": val_map})
            report(
                progress,
                f"epoch {epoch}/{cfg['epochs']}: loss={total / seen:.4f}"
                + (f" validation map50={val_map:.4f}" if val_map is not None else ""),
                unit="epoch",
                done=epoch,
                total=epoch if stopped_early else cfg["epochs"],
                loss=round(total / seen, 4),
                metric="map50",
                value=val_map,
                note=f"stopped: the {cfg['max_seconds']:.0f}s training budget is used" if stopped_early else "",
                extra=history[-1],
            )
            if val_map is None or val_map >= best_map:
                best_map, best_epoch = (val_map if val_map is not None else -1.0), epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if stopped_early:
                progress(f"stopped in epoch {epoch}: the {cfg['max_seconds']:.0f}s training budget is used")
                break
        assert best_state is not None
        model.load_state_dict(best_state)

        with storage.staged(storage.join(model_dir, MODEL_FILE)) as tmp:
            torch.save(model.state_dict(), tmp)
        seconds = round(time.monotonic() - started, 2)
        meta = {
            "model_type": MODEL_TYPE,
            "classes": classes,
            "format": "torch-state-dict",
            "architecture": "centernet-small",
            "file": MODEL_FILE,
            "input": "image",
            "input_size": size,
            "channels": channels,
            "width": cfg["width"],
            "stride": detector.STRIDE,
            "score_threshold": cfg["score_threshold"],
            "torch_version": torch.__version__,
            "params": {k: v for k, v in cfg.items() if k != "threads"},
            "best_epoch": best_epoch,
        }
        storage.write_json(storage.join(model_dir, MODEL_META_FILE), meta)
        progress(f"trained in {seconds:.1f}s (best epoch {best_epoch}, validation map50 {best_map:.4f})",
                 train_seconds=seconds)
        return {
            "validation_map50": best_map if val else None,
            "best_epoch": best_epoch,
            "epochs_run": epochs_run,
            "stopped_early": stopped_early,
            "train_size": len(train),
            "validation_size": len(val),
            "train_boxes": sum(map(len, b_train)),
            "n_params": detector.n_params(model),
            "train_seconds": seconds,
            "history": history,
        }

    def load_predictor(self, model_dir: str, sha256: str = "") -> BoxPredictor:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train()
        import torch

        from jobs.tasks import detector

        meta, path = model_file(model_dir, MODEL_TYPE, MODEL_FILE)
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        model = detector.CenterNet(len(meta["classes"]), int(meta.get("channels", 1)), int(meta.get("width", 32)))
        with storage.localized(path) as local:
            verify_digest(local, path, sha256, required=False)
            model.load_state_dict(torch.load(local, map_location="cpu", weights_only=True))
        model.eval()
        return BoxPredictor(model, meta)

    def evaluate(self, dataset: Dataset, predictor: Any, progress: Progress) -> Evaluation:
        from jobs.tasks import box_metrics

        classes = list(dataset.label_map["classes"])
        all_rows = dataset.all_rows()
        threshold = predictor.score_threshold
        progress(f"predicting {len(all_rows)} data rows", rows=len(all_rows))
        detections = predictor.detect(all_rows, EVAL_MIN_SCORE)
        rows: list[dict[str, Any]] = []
        for r, dets in zip(all_rows, detections, strict=True):
            kept = [d for d in dets if d["score"] >= threshold]
            rows.extend(box_row(d["name"], r["data_row_id"], k, d["score"], *d["box"]) for k, d in enumerate(kept))
        curve_pairs, kept_pairs = [], []
        test_boxes = 0
        for e, dets in zip(dataset.examples, detections, strict=False):
            if e["split"] != "test":
                continue
            gt = [{"name": b["name"], "box": xyxy(b)} for b in e["boxes"]]
            test_boxes += len(gt)
            kept = [d for d in dets if d["score"] >= threshold]
            curve_pairs.append((gt, dets))
            kept_pairs.append((gt, kept))
            counts = box_metrics.image_counts(gt, kept, IOU_THRESHOLD)
            rows.extend(confusion_rows(e["data_row_id"], counts))
        if not curve_pairs:
            raise DatasetError('no examples in split "test" to evaluate on')
        m = box_metrics.detection_metrics(curve_pairs, classes, IOU_THRESHOLD)
        at = box_metrics.detection_metrics(kept_pairs, classes, IOU_THRESHOLD)["per_class"]
        for c in classes:
            m["per_class"][c].update({k: at[c][k] for k in ("tp", "fp", "fn")})
            m["per_class"][c]["detections_above_threshold"] = at[c]["detections"]
        tp = sum(at[c]["tp"] for c in classes)
        fp = sum(at[c]["fp"] for c in classes)
        fn = sum(at[c]["fn"] for c in classes)
        aps = [v["ap50"] for v in m["per_class"].values() if v["ap50"] is not None]
        m.update(
            {
                "iou_threshold": IOU_THRESHOLD,
                "score_threshold": threshold,
                "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
                "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0,
                "ap50_min": min(aps) if aps else None,
                "ap50_max": max(aps) if aps else None,
                "test_size": len(curve_pairs),
                "test_boxes": test_boxes,
                "predicted_rows": len(all_rows),
                "predicted_boxes": sum(1 for r in rows if "bbox" in r),
            }
        )
        progress(
            f"test map50={m['map50']:.4f} (AP50 {m['ap50_min']}–{m['ap50_max']}) on {len(curve_pairs)} images, "
            f"{test_boxes} boxes",
            map50=m["map50"],
            test_size=len(curve_pairs),
        )
        summary = {
            k: m[k]
            for k in (
                "map50", "ap50_min", "ap50_max", "precision", "recall", "iou_threshold", "score_threshold",
                "test_size", "test_boxes", "predicted_rows", "predicted_boxes",
            )
        }
        summary["per_class_ap50"] = {c: m["per_class"][c]["ap50"] for c in classes}
        return Evaluation(metrics=m, summary=summary, prediction_rows=rows)


TASK = BoundingBox()
