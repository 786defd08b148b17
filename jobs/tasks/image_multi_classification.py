"""Image, several labels per data row: a checklist (targets = its answers) or several radio
questions (targets = `question/answer`). A small BatchNorm CNN with a global max-pool ("is it
anywhere in the image") and one sigmoid per class (jobs/tasks/cnn.py); the decision threshold is
tuned on the validation split, and at least the most likely class is predicted for every image
(the ETL keeps only examples with at least one answer, so an empty prediction is never right).

Params: as image_single_classification (image_size, channels, epochs=20, patience=5, batch_size,
lr, augment, max_seconds, threads, seed, fetch_workers) plus
  question    the checklist question to learn (default: the first checklist answered)
  questions   radio questions to learn as `question/answer` targets (default, when the run has no
              checklist: every radio question answered)
  threshold   a fixed decision threshold instead of tuning one on the validation split
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jobs.tasks import cnn, exportv2, images, multilabel
from jobs.tasks.base import SPLITS, Dataset, DatasetError, Evaluation, ParamError, Progress, Task
from jobs.tasks.image_single_classification import (
    check_meta,
    fetch_workers,
    fit_config,
    image_side,
    load_arrays,
    parse_image_instances,
    train_params,
    write_model,
)

MODEL_TYPE = "image_multi_classification"
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 19))  # 0.10 … 0.90


# --- decisions -----------------------------------------------------------------------------------


def decide(probs: Any, threshold: float, classes: Sequence[str], mode: str, min_one: bool) -> list[list[str]]:
    """Probabilities [N, K] → predicted class lists. Checklist: every class ≥ threshold (the top one
    when none passes and `min_one`). Radios: the most likely answer of each question."""
    out = []
    for p in probs:
        if mode == "radios":
            best: dict[str, tuple[float, str]] = {}
            for c, v in zip(classes, p, strict=True):
                q = c.partition(multilabel.RADIO_SEP)[0]
                if q not in best or v > best[q][0]:
                    best[q] = (float(v), c)
            out.append(sorted(c for _, c in best.values()))
            continue
        chosen = [c for c, v in zip(classes, p, strict=True) if v >= threshold]
        if not chosen and min_one and len(classes):
            chosen = [classes[int(p.argmax())]]
        out.append(chosen)
    return out


def micro_f1(y: Any, pred: list[list[str]], classes: Sequence[str]) -> float:
    index = {c: i for i, c in enumerate(classes)}
    tp = fp = fn = 0
    for row, chosen in zip(y, pred, strict=True):
        got = {index[c] for c in chosen}
        want = {i for i, v in enumerate(row) if v > 0.5}
        tp += len(got & want)
        fp += len(got - want)
        fn += len(want - got)
    return multilabel.prf(tp, fp, fn)[2]


def tune_threshold(probs: Any, y: Any, classes: Sequence[str], mode: str, min_one: bool) -> tuple[float, float]:
    """(threshold, validation micro-F1): the best of THRESHOLDS (ties → closest to 0.5)."""
    best = (-1.0, 0.5)
    for t in sorted(THRESHOLDS, key=lambda t: abs(t - 0.5)):
        f1 = micro_f1(y, decide(probs, t, classes, mode, min_one), classes)
        if f1 > best[0]:
            best = (f1, t)
    return best[1], best[0]


def _sigmoid(x: Any) -> Any:
    import numpy as np

    return 1.0 / (1.0 + np.exp(-x))


# --- predictor -----------------------------------------------------------------------------------


class MultiLabelImageClassifier:
    """A trained CNN + model.json: image rows → predicted labels and every class's probability."""

    def __init__(self, model: Any, meta: dict[str, Any]):
        self.model = model
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.side = int(meta["image_size"])
        self.mode = str(meta["channels"])
        self.threshold = float(meta["threshold"])
        self.target_mode = str(meta["mode"])
        self.min_one = bool(meta.get("min_one", True))

    def probabilities(self, rows: Sequence[Mapping[str, Any]], batch: int = 512) -> Any:
        import numpy as np

        out = [
            _sigmoid(cnn.predict_logits(self.model, load_arrays(rows[i : i + batch], self.side, self.mode)))
            for i in range(0, len(rows), batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        probs = self.probabilities(rows)
        labels = decide(probs, self.threshold, self.classes, self.target_mode, self.min_one)
        return [
            {"labels": chosen, "scores": {c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)}}
            for p, chosen in zip(probs, labels, strict=True)
        ]

    def parse_instances(self, instances: Sequence[Any]) -> list[dict[str, Any]]:
        return parse_image_instances(instances, self.side, self.mode)


# --- the task ------------------------------------------------------------------------------------


def _questions(
    rows: Sequence[Mapping[str, Any]], model_run_id: str, params: Mapping[str, Any]
) -> tuple[str, list[str]]:
    """(mode, questions): the checklist named by `question` (or the first answered), else radios."""
    if params.get("questions") is not None:
        qs = params["questions"]
        if not isinstance(qs, list) or not qs or not all(isinstance(q, str) and q for q in qs):
            raise ParamError(f"param questions must be a non-empty list of radio question names, not {qs!r}")
        return "radios", sorted(set(qs))
    question = params.get("question")
    if question is not None and (not isinstance(question, str) or not question):
        raise ParamError(f"param question must be a checklist question name, not {question!r}")
    checklist = question or multilabel.first_checklist_question(rows, model_run_id)
    if checklist:
        return "checklist", [checklist]
    radios = multilabel.radio_questions(rows, model_run_id)
    if radios:
        return "radios", radios
    raise DatasetError(
        f"no checklist or radio classification is answered in model run {model_run_id!r}: "
        f"{MODEL_TYPE} needs a checklist question or radio questions"
    )


class ImageMultiClassification(Task):
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
        mode, questions = _questions(rows, model_run_id, params)
        workers = fetch_workers(params)
        conflicts = exportv2.SkipLog()

        def target_of(ref: exportv2.RowRef) -> tuple[dict[str, Any], str | None]:
            labels = exportv2.run_labels(ref.run)
            answered = []
            for label in labels:
                targets, did = multilabel.label_targets(label, mode, questions)
                if did and targets:
                    answered.append(sorted(targets))
            if len({tuple(a) for a in answered}) > 1:
                conflicts.add("conflicting_answers", ref.data_row_id)  # the first label wins
            if not answered:
                return {"targets": None}, "no_label" if not labels else "no_answer"
            return {"targets": answered[0]}, None

        converted = images.convert_rows(rows, model_run_id, out_uri, target_of, progress, workers=workers)
        examples = converted.examples
        classes = sorted({c for e in examples for c in e["targets"]})
        counts = multilabel.count_examples(examples)
        stats = {
            "model_run_id": model_run_id,
            "mode": mode,
            "questions": questions,
            "rows": len(rows),
            "examples": len(examples),
            "per_split": {s: sum(1 for e in examples if e["split"] == s) for s in SPLITS},
            "per_class": {c: {s: counts.get((c, s), 0) for s in SPLITS} for c in classes},
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
        label_map = {"mode": mode, "questions": questions, "classes": classes}
        if mode == "checklist":
            label_map["question"] = questions[0]
        return Dataset(examples=examples, label_map=label_map, stats=stats, predict_only=converted.predict_only)

    def validate(self, dataset: Dataset, min_examples: Mapping[str, int]) -> None:
        where = f" in model run {dataset.stats.get('model_run_id', '')!r}"
        if not dataset.examples:
            skipped = dataset.stats.get("skipped", {})
            why = ", ".join(f"{v['count']} {k}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]["count"]))
            raise DatasetError(
                f"no labeled examples with a train/validation/test split{where}"
                + (f" (rows skipped: {why})" if why else "")
            )
        classes = dataset.label_map.get("classes", [])
        if len(classes) < 2:
            found = ", ".join(f'"{c}"' for c in classes) or "none"
            raise DatasetError(f"need at least 2 classes to train, found {len(classes)} ({found}){where}")
        multilabel.validate_counts(multilabel.count_examples(dataset.examples), classes, min_examples)

    def etl_summary(self, dataset: Dataset) -> dict[str, Any]:
        media = dataset.stats.get("media", {})
        return {
            **super().etl_summary(dataset),
            "classes": len(dataset.label_map.get("classes", [])),
            "mode": dataset.label_map.get("mode", ""),
            "fetched": media.get("fetched", 0),
            "fetch_failed": media.get("failed", 0),
        }

    def train(
        self, dataset: Dataset, model_dir: str, params: Mapping[str, Any], progress: Progress
    ) -> dict[str, Any]:
        import numpy as np

        cfg = train_params(params, epochs=20, patience=5)
        fixed = params.get("threshold")
        if fixed is not None and (not isinstance(fixed, int | float) or isinstance(fixed, bool) or not 0 < fixed < 1):
            raise ParamError(f"param threshold must be a number between 0 and 1, not {fixed!r}")
        started = time.monotonic()
        train, val = dataset.train_validation()
        classes = list(dataset.label_map["classes"])
        mode = dataset.label_map.get("mode", "checklist")
        index = {c: i for i, c in enumerate(classes)}
        side = image_side(train, cfg["image_size"])
        channels = cfg["channels"] or images.guess_mode([e["image"] for e in train])
        progress(
            f"loading {len(train)} train + {len(val)} validation images at {side}px {channels}",
            train_size=len(train),
            validation_size=len(val),
        )
        x_train, x_val = load_arrays(train, side, channels), load_arrays(val, side, channels)

        def onehot(rows: Sequence[Mapping[str, Any]]) -> Any:
            y = np.zeros((len(rows), len(classes)), dtype=np.float32)
            for i, e in enumerate(rows):
                for c in e["targets"]:
                    y[i, index[c]] = 1.0
            return y

        y_train, y_val = onehot(train), onehot(val)
        min_one = all(e["targets"] for e in train)

        def score(logits: Any, y: Any) -> float:
            return tune_threshold(_sigmoid(logits), y, classes, mode, min_one)[1] if len(y) else 0.0

        arch = cnn.default_arch(side, 1 if channels == "L" else 3, len(classes), pool="max", dropout=0.1)
        model = cnn.build(arch, seed=cfg["seed"])
        # Canvases put objects near the border: shift and rotate less than for centred single objects.
        fit = cnn.fit(
            model,
            x_train,
            y_train,
            x_val,
            y_val,
            loss="bce",
            score=score,
            cfg=fit_config(cfg, rotate=8.0, shift=0.04, scale=(0.95, 1.05)),
            progress=progress,
            metric="micro_f1",
        )
        if fixed is not None:
            threshold, val_f1 = float(fixed), None
        elif len(val):
            val_probs = _sigmoid(cnn.predict_logits(model, x_val))
            threshold, val_f1 = tune_threshold(val_probs, y_val, classes, mode, min_one)
        else:
            threshold, val_f1 = 0.5, None
        seconds = round(time.monotonic() - started, 2)
        meta = {
            "model_type": MODEL_TYPE,
            "framework": "torch",
            "file": cnn.WEIGHTS_FILE,
            "arch": arch,
            "mode": mode,
            "questions": list(dataset.label_map.get("questions", [])),
            "classes": classes,
            "threshold": threshold,
            "min_one": min_one,
            "image_size": side,
            "channels": channels,
            "train_size": len(train),
            "validation_size": len(val),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_model(model_dir, model, meta)
        progress(
            f"trained in {seconds:.1f}s: validation micro_f1={val_f1} at threshold {threshold} "
            f"(best epoch {fit['best_epoch']})",
            train_seconds=seconds,
        )
        return {
            "train_size": len(train),
            "validation_size": len(val),
            "classes": len(classes),
            "image_size": side,
            "channels": channels,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "threshold": threshold,
            "validation_micro_f1": round(val_f1, 4) if val_f1 is not None else None,
            "best_epoch": fit["best_epoch"],
            "epochs_run": fit["epochs_run"],
            "stopped_by": fit["stopped_by"],
            "threads": fit["threads"],
            "train_seconds": seconds,
            "history": fit["history"],
            "fit_config": fit["config"],
        }

    def load_predictor(self, model_dir: str, sha256: str = "") -> MultiLabelImageClassifier:
        meta = check_meta(model_dir, MODEL_TYPE)
        cnn.threads(0)
        model = cnn.load(model_dir, meta["arch"], meta.get("file", cnn.WEIGHTS_FILE), sha256)
        return MultiLabelImageClassifier(model, meta)

    def evaluate(self, dataset: Dataset, predictor: Any, progress: Progress) -> Evaluation:
        classes = list(dataset.label_map["classes"])
        mode = dataset.label_map.get("mode", "checklist")
        every = dataset.all_rows()
        progress(f"predicting {len(every)} data rows", rows=len(every))
        predictions = predictor.predict(every)
        rows: list[dict[str, Any]] = []
        for r, p in zip(every, predictions, strict=True):
            if mode == "radios":
                rows.extend(multilabel.radio_rows(r["data_row_id"], p["scores"]))
            elif p["labels"]:
                answers = {c: p["scores"][c] for c in p["labels"]}
                rows.append(multilabel.checklist_row(dataset.label_map["question"], r["data_row_id"], answers))
        y_true: list[set[str]] = []
        y_pred: list[set[str]] = []
        for example, p in zip(dataset.examples, predictions, strict=False):
            if example["split"] != "test":
                continue
            y_true.append(set(example["targets"]))
            y_pred.append(set(p["labels"]))
            rows.extend(multilabel.confusion_rows(example["data_row_id"], example["targets"], p["labels"], classes))
        if not y_true:
            raise DatasetError('no examples in split "test" to evaluate on')
        m = multilabel.metrics(y_true, y_pred, classes)
        m["predicted_rows"] = len(predictions)
        m["threshold"] = getattr(predictor, "threshold", None)
        progress(
            f"test micro_f1={m['micro_f1']:.4f} macro_f1={m['macro_f1']:.4f} "
            f"subset_accuracy={m['subset_accuracy']:.4f} on {len(y_true)} rows",
            micro_f1=m["micro_f1"],
            macro_f1=m["macro_f1"],
            test_size=len(y_true),
        )
        summary = {**multilabel.summary(m), "predicted_rows": len(predictions)}
        return Evaluation(metrics=m, summary=summary, prediction_rows=rows)


TASK = ImageMultiClassification()
