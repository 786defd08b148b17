"""Image, one radio answer per data row: a small BatchNorm CNN in plain torch (jobs/tasks/cnn.py),
trained from scratch on the CPU with light affine augmentation and early stopping on the
validation split (docs/architecture.md §3). Media are fetched by jobs/tasks/images.py during ETL.

torch/numpy/PIL are imported inside functions: importing this module is cheap.

Run params understood (all optional):
  question      radio question to learn (default: the first one answered in the export)
  image_size    side in pixels the images are resized to (default: the most common size, ≤ 128)
  channels      "L" (gray) or "RGB" (default: guessed from the first training images)
  epochs        maximum epochs (default 15); patience: early-stopping patience (default 6)
  batch_size    default 64; lr: peak one-cycle learning rate (default 3e-3)
  augment       random rotation/scale/shift while training (default true)
  max_seconds   training time budget: epochs and LR schedule are cut to fit (default 240, the
                train job has 5 minutes)
  threads       torch threads (default: half the cores, 1..4); seed (default 0)
  fetch_workers parallel media downloads in ETL (default 8)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jobs.tasks import classification, cnn, exportv2, images
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
)
from lbtrain import storage

MODEL_TYPE = "image_single_classification"
MAX_SIDE = 128


# --- params (shared with image_multi_classification) ---------------------------------------------


def _int_param(params: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = params.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ParamError(f"param {name} must be an integer from {lo} to {hi}, not {value!r}")
    return value


def _float_param(params: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise ParamError(f"param {name} must be a number from {lo:g} to {hi:g}, not {value!r}")
    return float(value)


def train_params(params: Mapping[str, Any], **defaults: Any) -> dict[str, Any]:
    """Validate the training params; a bad value is a ParamError naming the param."""
    out: dict[str, Any] = {
        "epochs": _int_param(params, "epochs", defaults.get("epochs", 15), 1, 500),
        "patience": _int_param(params, "patience", defaults.get("patience", 6), 1, 500),
        "batch_size": _int_param(params, "batch_size", defaults.get("batch_size", 64), 2, 4096),
        "lr": _float_param(params, "lr", defaults.get("lr", 3e-3), 1e-6, 1.0),
        "max_seconds": _float_param(params, "max_seconds", defaults.get("max_seconds", 240.0), 0.001, 86400.0),
        "threads": _int_param(params, "threads", 0, 0, 64),
        "seed": _int_param(params, "seed", 0, 0, 2**31 - 1),
        "image_size": _int_param(params, "image_size", 0, 0, 512) or None,
    }
    augment = params.get("augment", True)
    if not isinstance(augment, bool):
        raise ParamError(f"param augment must be true or false, not {augment!r}")
    out["augment"] = augment
    channels = params.get("channels")
    if channels not in (None, "L", "RGB"):
        raise ParamError(f'param channels must be "L" or "RGB", not {channels!r}')
    out["channels"] = channels
    return out


def fetch_workers(params: Mapping[str, Any]) -> int:
    return _int_param(params, "fetch_workers", images.DEFAULT_WORKERS, 1, 64)


def fit_config(cfg: Mapping[str, Any], **overrides: Any) -> cnn.FitConfig:
    keys = ("epochs", "patience", "batch_size", "lr", "max_seconds", "threads", "seed", "augment")
    return cnn.FitConfig(**{k: cfg[k] for k in keys}, **overrides)


def image_side(examples: Sequence[Mapping[str, Any]], requested: int | None) -> int:
    """The side images are resized to: the param, else the most common width/height (≤ MAX_SIDE)."""
    if requested:
        return requested
    sizes = Counter((int(e.get("width") or 0), int(e.get("height") or 0)) for e in examples)
    (w, h), _ = sizes.most_common(1)[0]
    return max(8, min(MAX_SIDE, max(w, h) or 28))


def load_arrays(rows: Sequence[Mapping[str, Any]], side: int, mode: str) -> Any:
    """Dataset rows ({"image": uri} or {"pixels": array} from a serving instance) → uint8 batch."""
    import numpy as np

    shape = (len(rows), side, side) if mode == "L" else (len(rows), side, side, 3)
    out = np.zeros(shape, dtype=np.uint8)
    to_read = [i for i, r in enumerate(rows) if r.get("pixels") is None]
    for i, r in enumerate(rows):
        if r.get("pixels") is not None:
            out[i] = r["pixels"]
    for i, array in zip(to_read, images.load_images([rows[i]["image"] for i in to_read], size=side, mode=mode),
                        strict=True):
        out[i] = array
    return out


def parse_image_instances(instances: Sequence[Any], side: int, mode: str) -> list[dict[str, Any]]:
    """Vertex image instances ({"b64"}, {"image": {"b64"}}, {"content"}, or a bare base64 string)
    → rows with decoded, resized pixels; ValueError names the bad instance."""
    rows = []
    for i, inst in enumerate(instances):
        try:
            rows.append({"pixels": images.decode_b64(images.instance_b64(inst), size=side, mode=mode)})
        except ValueError as exc:
            raise ValueError(f"instance {i}: {exc}") from None
    return rows


def write_model(model_dir: str, model: Any, meta: dict[str, Any]) -> None:
    """weights.pt first, model.json last: a model dir with model.json is complete."""
    cnn.save(model_dir, model)
    storage.write_json(storage.join(model_dir, MODEL_META_FILE), meta)


def check_meta(model_dir: str, model_type: str) -> dict[str, Any]:
    return model_file(model_dir, model_type, cnn.WEIGHTS_FILE)[0]


# --- predictor -----------------------------------------------------------------------------------


class ImageClassifier:
    """A trained CNN + model.json: image rows → class, confidence and every class's probability."""

    def __init__(self, model: Any, meta: dict[str, Any]):
        self.model = model
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.side = int(meta["image_size"])
        self.mode = str(meta["channels"])

    def probabilities(self, rows: Sequence[Mapping[str, Any]], batch: int = 512) -> Any:
        import numpy as np

        out = []
        for i in range(0, len(rows), batch):
            logits = cnn.predict_logits(self.model, load_arrays(rows[i : i + batch], self.side, self.mode))
            z = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(z)
            out.append(p / p.sum(axis=1, keepdims=True))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for p in self.probabilities(rows):
            best = int(p.argmax())
            out.append(
                {
                    "label": self.classes[best],
                    "confidence": round(float(p[best]), 6),
                    "scores": {c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)},
                }
            )
        return out

    def parse_instances(self, instances: Sequence[Any]) -> list[dict[str, Any]]:
        return parse_image_instances(instances, self.side, self.mode)


# --- the task ------------------------------------------------------------------------------------


class ImageSingleClassification(Task):
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
        question = params.get("question") or exportv2.first_radio_question(rows, model_run_id)
        if not question:
            raise DatasetError(
                f"no radio classification is answered in model run {model_run_id!r}: "
                f"{MODEL_TYPE} needs one radio question"
            )
        workers = fetch_workers(params)
        conflicts = exportv2.SkipLog()

        def target_of(ref: exportv2.RowRef) -> tuple[dict[str, Any], str | None]:
            answers = exportv2.radio_answers(ref.run, question)
            if len(set(answers)) > 1:
                conflicts.add("conflicting_answers", ref.data_row_id)  # the first label wins
            if not answers:
                return {"target": None}, "no_label" if not exportv2.run_labels(ref.run) else "no_answer"
            return {"target": answers[0]}, None

        converted = images.convert_rows(rows, model_run_id, out_uri, target_of, progress, workers=workers)
        examples = converted.examples
        classes = sorted({e["target"] for e in examples})
        per_class = {c: {s: 0 for s in SPLITS} for c in classes}
        for e in examples:
            per_class[e["target"]][e["split"]] += 1
        stats = {
            "model_run_id": model_run_id,
            "question": question,
            "rows": len(rows),
            "examples": len(examples),
            "per_split": {s: sum(1 for e in examples if e["split"] == s) for s in SPLITS},
            "per_class": per_class,
            "predict_only": len(converted.predict_only),
            "skipped": converted.skipped.as_dict(),
            "notes": conflicts.as_dict(),
            "media": converted.fetch,
        }
        progress(
            f"converted {len(rows)} rows: {len(examples)} examples, {len(converted.predict_only)} predict-only, "
            f"{converted.skipped.total()} not used for training ({converted.fetch['failed']} fetch failures)",
            examples=len(examples),
        )
        return Dataset(
            examples=examples,
            label_map={"question": question, "classes": classes},
            stats=stats,
            predict_only=converted.predict_only,
        )

    def validate(self, dataset: Dataset, min_examples: Mapping[str, int]) -> None:
        if not dataset.examples:
            skipped = dataset.stats.get("skipped", {})
            why = ", ".join(f"{v['count']} {k}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]["count"]))
            raise DatasetError(
                f"no labeled examples with a train/validation/test split in model run "
                f"{dataset.stats.get('model_run_id', '')!r}" + (f" (rows skipped: {why})" if why else "")
            )
        classification.validate_counts(
            dataset.examples,
            dataset.label_map.get("classes", []),
            min_examples,
            model_run_id=dataset.stats.get("model_run_id", ""),
        )

    def etl_summary(self, dataset: Dataset) -> dict[str, Any]:
        media = dataset.stats.get("media", {})
        return {
            **super().etl_summary(dataset),
            "classes": len(dataset.label_map.get("classes", [])),
            "question": dataset.label_map.get("question", ""),
            "fetched": media.get("fetched", 0),
            "fetch_failed": media.get("failed", 0),
        }

    def train(
        self, dataset: Dataset, model_dir: str, params: Mapping[str, Any], progress: Progress
    ) -> dict[str, Any]:
        import numpy as np

        cfg = train_params(params)
        started = time.monotonic()
        train, val = dataset.train_validation()
        classes = list(dataset.label_map["classes"])
        index = {c: i for i, c in enumerate(classes)}
        side = image_side(train, cfg["image_size"])
        mode = cfg["channels"] or images.guess_mode([e["image"] for e in train])
        progress(
            f"loading {len(train)} train + {len(val)} validation images at {side}px {mode}",
            train_size=len(train),
            validation_size=len(val),
        )
        x_train, x_val = load_arrays(train, side, mode), load_arrays(val, side, mode)
        y_train = np.array([index[e["target"]] for e in train], dtype=np.int64)
        y_val = np.array([index[e["target"]] for e in val], dtype=np.int64)

        def score(logits: Any, y: Any) -> float:
            return float((logits.argmax(axis=1) == y).mean()) if len(y) else 0.0

        arch = cnn.default_arch(side, 1 if mode == "L" else 3, len(classes), pool="avg")
        model = cnn.build(arch, seed=cfg["seed"])
        fit = cnn.fit(
            model, x_train, y_train, x_val, y_val, loss="ce", score=score, cfg=fit_config(cfg), progress=progress,
            metric="accuracy",
        )
        val_pred = [classes[i] for i in cnn.predict_logits(model, x_val).argmax(axis=1)] if len(val) else []
        val_m = classification.metrics([e["target"] for e in val], val_pred, classes) if val else {}
        seconds = round(time.monotonic() - started, 2)
        meta = {
            "model_type": MODEL_TYPE,
            "framework": "torch",
            "file": cnn.WEIGHTS_FILE,
            "arch": arch,
            "question": dataset.label_map["question"],
            "classes": classes,
            "image_size": side,
            "channels": mode,
            "train_size": len(train),
            "validation_size": len(val),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_model(model_dir, model, meta)
        progress(
            f"trained in {seconds:.1f}s: validation accuracy={val_m.get('accuracy')} (best epoch {fit['best_epoch']})",
            train_seconds=seconds,
        )
        return {
            "train_size": len(train),
            "validation_size": len(val),
            "classes": len(classes),
            "image_size": side,
            "channels": mode,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "validation_accuracy": val_m.get("accuracy"),
            "validation_macro_f1": val_m.get("macro_f1"),
            "best_epoch": fit["best_epoch"],
            "epochs_run": fit["epochs_run"],
            "stopped_by": fit["stopped_by"],
            "threads": fit["threads"],
            "train_seconds": seconds,
            "history": fit["history"],
            "fit_config": fit["config"],
        }

    def load_predictor(self, model_dir: str, sha256: str = "") -> ImageClassifier:
        meta = check_meta(model_dir, MODEL_TYPE)
        cnn.threads(0)
        return ImageClassifier(cnn.load(model_dir, meta["arch"], meta.get("file", cnn.WEIGHTS_FILE), sha256), meta)

    def evaluate(self, dataset: Dataset, predictor: Any, progress: Progress) -> Evaluation:
        return classification.evaluate_single_label(dataset, predictor, progress)


TASK = ImageSingleClassification()
