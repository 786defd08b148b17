"""Text, a set of classes per data row (a checklist, or several radio questions as `question/answer`
targets): TF-IDF (word 1–2-grams + case-kept char_wb 2–5-grams) + one-vs-rest logistic regression,
C and per-class decision thresholds picked on the validation split (docs/architecture.md §3).

A label that answers none of the questions means "no class applies" (Labelbox exports nothing for
an unticked checklist) and is an example with an empty target set; `unanswered: "skip"` makes such
rows predict-only instead. Rows with no label at all are always predict-only. Symmetrically, a row
predicted to have no class uploads no checklist row (counted as `empty_prediction_rows`).
sklearn/joblib are imported inside functions so importing this module stays cheap.

Run params (all optional):
  question             checklist question to learn (default: the first checklist in the export)
  questions            radio questions to learn as `question/answer` targets (default: all radios,
                       used when the export has no checklist)
  unanswered           "empty" (default) or "skip"
  C                    number or list to try (default [1, 3, 10, 30])
  threshold            "per_class" (default), "global", or a number in (0, 1)
  refit_on_validation  refit on train+validation with the chosen C (default true)
  max_iter, seed       solver iterations (default 2000), random seed (default 0)
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
from lbtrain import storage
from lbtrain.progress import Counter

MODEL_TYPE = "text_multi_classification"
MODEL_FILE = "model.joblib"
DEFAULT_C = (1.0, 3.0, 10.0, 30.0)
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
MIN_VAL_POSITIVES = 3  # fewer validation positives than this: the class uses the global threshold


def _train_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the training params; a bad value is a ParamError naming the param."""
    raw_c = params.get("C", list(DEFAULT_C))
    grid = raw_c if isinstance(raw_c, list) else [raw_c]
    if not grid or not all(isinstance(c, int | float) and not isinstance(c, bool) and c > 0 for c in grid):
        raise ParamError(f"param C must be a positive number or a list of them, not {raw_c!r}")
    out: dict[str, Any] = {"C": sorted(float(c) for c in grid)}
    threshold = params.get("threshold", "per_class")
    if not (
        threshold in ("per_class", "global")
        or (isinstance(threshold, int | float) and not isinstance(threshold, bool) and 0 < threshold < 1)
    ):
        raise ParamError(f'param threshold must be "per_class", "global" or a number in (0, 1), not {threshold!r}')
    out["threshold"] = threshold
    for name, default in (("max_iter", 2000), ("seed", 0)):
        value = params.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ParamError(f"param {name} must be a non-negative integer, not {value!r}")
        out[name] = value
    refit = params.get("refit_on_validation", True)
    if not isinstance(refit, bool):
        raise ParamError(f"param refit_on_validation must be true or false, not {refit!r}")
    out["refit_on_validation"] = refit
    return out


# --- model --------------------------------------------------------------------------------------


def _features() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode")),
            # case kept: capitalization is much of what tells entity mentions apart in tweets
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, lowercase=False
                ),
            ),
        ]
    )


def _classifier(c: float, cfg: Mapping[str, Any]) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    return OneVsRestClassifier(
        LogisticRegression(C=c, class_weight="balanced", max_iter=cfg["max_iter"], random_state=cfg["seed"])
    )


def _indicator(targets: Iterable[Iterable[str]], classes: Sequence[str]) -> Any:
    import numpy as np

    rows = [list(ts) for ts in targets]
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(rows), len(classes)), dtype=int)
    for r, ts in enumerate(rows):
        for t in ts:
            if t in index:
                y[r, index[t]] = 1
    return y


def _f1(y: Any, pred: Any) -> float:
    tp = int((y & pred).sum())
    fp = int(((1 - y) & pred).sum())
    fn = int((y & (1 - pred)).sum())
    return multilabel.prf(tp, fp, fn)[2]


def tune_thresholds(y: Any, proba: Any, mode: Any) -> list[float]:
    """Per-class thresholds maximizing F1 on validation; classes with few validation positives
    (and every class when mode is "global") use the one threshold maximizing micro-F1."""
    if isinstance(mode, int | float):
        return [float(mode)] * y.shape[1]
    best_global = max(THRESHOLD_GRID, key=lambda t: (_f1(y, (proba >= t).astype(int)), -abs(t - 0.5)))
    out = []
    for j in range(y.shape[1]):
        if mode == "global" or y[:, j].sum() < MIN_VAL_POSITIVES:
            out.append(float(best_global))
            continue
        col = y[:, j]
        out.append(
            float(max(THRESHOLD_GRID, key=lambda t: (_f1(col, (proba[:, j] >= t).astype(int)), -abs(t - 0.5))))
        )
    return out


def decide(scores: Mapping[str, float], thresholds: Mapping[str, float], mode: str) -> list[str]:
    """Scores → predicted classes: thresholded; with radio targets at most one answer per question."""
    chosen = [c for c, p in scores.items() if p >= thresholds.get(c, 0.5)]
    if mode != "radios":
        return sorted(chosen)
    best: dict[str, str] = {}
    for c in chosen:
        q = c.partition(multilabel.RADIO_SEP)[0]
        if q not in best or scores[c] > scores[best[q]]:
            best[q] = c
    return sorted(best.values())


class TextMultiClassifier:
    """A fitted pipeline (text → per-class probabilities), thresholds and model.json metadata."""

    def __init__(self, pipeline: Any, meta: dict[str, Any]):
        self.pipeline = pipeline
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.thresholds: dict[str, float] = dict(meta["thresholds"])
        self.mode: str = meta.get("mode", "checklist")

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if not rows:
            return []
        proba = self.pipeline.predict_proba([str(r.get("text") or "") for r in rows])
        out = []
        for p in proba:
            scores = {c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)}
            out.append({"labels": decide(scores, self.thresholds, self.mode), "scores": scores})
        return out

    def parse_instances(self, instances: Sequence[Any]) -> list[dict[str, Any]]:
        return text_rows.parse_text_instances(instances)


# --- the task -----------------------------------------------------------------------------------


class _QuestionFinder:
    """What the questions are when no param names them, found on the way through the export: the first
    checklist question answered in the model run (export order), else every radio question answered."""

    def __init__(self) -> None:
        self.checklist: str | None = None
        self.radios: set[str] = set()

    def see(self, ref: exportv2.RowRef) -> None:
        if self.checklist is not None or ref.run is None:
            return
        for label in exportv2.run_labels(ref.run):
            for c in exportv2.classifications(label):
                if isinstance(c.get("checklist_answers"), list) and c.get("name"):
                    self.checklist = str(c["name"])
                    return
                if isinstance(c.get("radio_answer"), Mapping) and c.get("name"):
                    self.radios.add(str(c["name"]))


HELD_IN_MEMORY = 1000  # rows held back in a list before they go to a temporary file


class _Held:
    """Usable rows held back, in order, until the questions are known (no checklist seen yet and no
    question param): the first HELD_IN_MEMORY in a list, the rest in a temporary JSON-lines file."""

    def __init__(self) -> None:
        self.rows: list[tuple[dict[str, Any], str | None, list[Any]]] = []
        self.file: Any = None

    def __bool__(self) -> bool:
        return bool(self.rows) or self.file is not None

    def add(self, row: dict[str, Any], reason: str | None, labels: list[Any]) -> None:
        if len(self.rows) < HELD_IN_MEMORY:
            self.rows.append((row, reason, labels))
            return
        if self.file is None:
            self.file = tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n")
        self.file.write(json.dumps([row, reason, labels]) + "\n")  # ASCII: lone surrogates survive

    def drain(self) -> Iterator[tuple[dict[str, Any], str | None, list[Any]]]:
        yield from self.rows
        self.rows = []
        if self.file is not None:
            file, self.file = self.file, None
            with file:
                file.seek(0)
                for line in file:
                    row, reason, labels = json.loads(line)
                    yield row, reason, labels


class TextMultiClassification(text_rows.StreamingTextTask):
    model_type = MODEL_TYPE

    def check_params(self, params: Mapping[str, Any]) -> None:
        unanswered = params.get("unanswered", "empty")
        if unanswered not in ("empty", "skip"):
            raise ParamError(f'param unanswered must be "empty" or "skip", not {unanswered!r}')
        questions = params.get("questions") or None
        if questions is not None and (
            not isinstance(questions, list) or not all(isinstance(q, str) and q for q in questions)
        ):
            raise ParamError(f"param questions must be a list of radio question names, not {questions!r}")

    def convert_rows(
        self, rows: Iterable[Mapping[str, Any]], model_run_id: str, params: Mapping[str, Any], out: text_rows.Snapshot
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Export v2 rows → (label_map, stats), one pass over `rows`.

        Without a question param the first checklist answered decides (every row before it answers no
        checklist, so it is what it would be once the question is known); until one is seen, usable
        rows are held back (_Held): if the export ends without one, its radio questions decide."""
        skip_unanswered = params.get("unanswered", "empty") == "skip"
        question = params.get("question") or None
        questions = params.get("questions") or None
        finder = _QuestionFinder() if question is None and questions is None else None
        mode, asked = ("checklist", [str(question)]) if question is not None else ("radios", sorted(questions or []))
        held = _Held()
        n_empty = 0

        def add(row: dict[str, Any], reason: str | None, labels: list[Any]) -> None:
            nonlocal n_empty
            found: list[set[str]] = []
            for label in labels:
                targets, answered = multilabel.label_targets(label, mode, asked)
                if answered:
                    found.append(targets)
            if len(found) > 1 and len({frozenset(t) for t in found}) > 1:
                out.notes.add("conflicting_labels", row["data_row_id"])  # the first label wins
            targets = found[0] if found else set()
            if not labels:
                reason = "no_label"
            elif not found:
                if skip_unanswered:
                    reason = reason or "no_answer"
                else:
                    out.notes.add("no_answer_as_empty_set", row["data_row_id"])
            row["targets"] = sorted(targets)
            if not reason and not targets:
                n_empty += 1
            out.add(row, reason, row["targets"])

        for tr in out.text_rows(rows, model_run_id, on_ref=finder.see if finder else None):
            if finder is not None:
                if finder.checklist is None:
                    held.add(tr.base(), tr.split_reason, tr.labels)
                    continue
                mode, asked, finder = "checklist", [finder.checklist], None
                for row, reason, labels in held.drain():
                    add(row, reason, labels)
            add(tr.base(), tr.split_reason, tr.labels)
        out.require_rows(model_run_id)
        if finder is not None:
            if finder.checklist is not None:
                mode, asked = "checklist", [finder.checklist]
            elif finder.radios:
                mode, asked = "radios", sorted(finder.radios)
            else:
                raise DatasetError(
                    f"no checklist or radio classification is answered in model run {model_run_id!r}: "
                    "text_multi_classification needs a checklist (or radio questions)"
                )
            for row, reason, labels in held.drain():
                add(row, reason, labels)

        classes = out.classes()
        stats = out.stats(model_run_id, mode=mode, questions=asked, empty_target_examples=n_empty)
        out.done(f"examples ({len(classes)} classes)")
        label_map = {"mode": mode, "question": asked[0] if mode == "checklist" else None, "questions": asked}
        return {**label_map, "classes": classes}, stats

    def validate(self, dataset: Dataset, min_examples: Mapping[str, int]) -> None:
        self.require_examples(dataset)
        classes = dataset.label_map.get("classes", [])
        if not classes:
            raise DatasetError(
                f"no class is ever answered in model run {dataset.stats.get('model_run_id', '')!r}: nothing to learn"
            )
        counts = self.class_split_counts(dataset, multilabel.count_examples)
        multilabel.validate_counts(counts, classes, min_examples)

    def etl_summary(self, dataset: Dataset) -> dict[str, Any]:
        return {
            **super().etl_summary(dataset),
            "classes": len(dataset.label_map.get("classes", [])),
            "mode": dataset.label_map.get("mode", ""),
        }

    def train(
        self, dataset: Dataset, model_dir: str, params: Mapping[str, Any], progress: Progress
    ) -> dict[str, Any]:
        import sklearn
        from sklearn.pipeline import Pipeline

        cfg = _train_params(params)
        started = time.monotonic()
        train, val = dataset.train_validation()
        classes = list(dataset.label_map["classes"])
        progress(
            f"training on {len(train)} examples ({len(val)} validation, {len(classes)} classes)",
            train_size=len(train),
            validation_size=len(val),
        )
        features = _features()
        x_train = features.fit_transform([e["text"] for e in train])
        y_train = _indicator([e["targets"] for e in train], classes)
        x_val = features.transform([e["text"] for e in val]) if val else None
        y_val = _indicator([e["targets"] for e in val], classes)

        best: tuple[float, float, Any, list[float]] | None = None  # (micro_f1, C, classifier, thresholds)
        tried = []
        refit = bool(cfg["refit_on_validation"] and val)
        fits = Counter(progress, "fit", (len(cfg["C"]) if val else 1) + refit, metric="micro_f1")
        for c in cfg["C"]:
            clf = _classifier(c, cfg).fit(x_train, y_train)
            if x_val is None:
                fixed = cfg["threshold"] if isinstance(cfg["threshold"], float | int) else 0.5
                best = (0.0, c, clf, [float(fixed)] * len(classes))
                fits.step(f"C={c:g}: fitted (no validation split)", note=f"C={c:g}")
                break
            proba = clf.predict_proba(x_val)
            thresholds = tune_thresholds(y_val, proba, cfg["threshold"])
            pred = (proba >= thresholds).astype(int)
            f1 = round(_f1(y_val, pred), 4)
            tried.append({"C": c, "micro_f1": f1})
            fits.step(f"C={c:g}: validation micro_f1={f1:.4f} (tuned thresholds)", value=f1, note=f"C={c:g}",
                      extra=tried[-1])
            if best is None or f1 > best[0]:
                best = (f1, c, clf, thresholds)
        assert best is not None
        val_f1, best_c, clf, thresholds = best
        if refit:
            progress(f"refitting with C={best_c:g} on train+validation ({len(train) + len(val)} examples)")
            both = train + val
            pipeline = Pipeline([("features", _features()), ("clf", _classifier(best_c, cfg))])
            pipeline.fit([e["text"] for e in both], _indicator([e["targets"] for e in both], classes))
            fits.step(f"refitted with C={best_c:g} on train+validation", note=f"refit C={best_c:g} on train+validation")
            fitted_on = ["train", "validation"]
        else:
            pipeline = Pipeline([("features", features), ("clf", clf)])
            fitted_on = ["train"]

        save_joblib(model_dir, pipeline, MODEL_FILE)
        seconds = round(time.monotonic() - started, 2)
        threshold_map = {c: round(t, 4) for c, t in zip(classes, thresholds, strict=True)}
        meta = {
            "model_type": MODEL_TYPE,
            "mode": dataset.label_map.get("mode", "checklist"),
            "question": dataset.label_map.get("question"),
            "questions": dataset.label_map.get("questions", []),
            "classes": classes,
            "thresholds": threshold_map,
            "format": "sklearn-pipeline-joblib",
            "file": MODEL_FILE,
            "input": "text",
            "sklearn_version": sklearn.__version__,
            "params": {**cfg, "C": best_c},
            "fitted_on": fitted_on,
        }
        storage.write_json(storage.join(model_dir, MODEL_META_FILE), meta)
        progress(f"trained in {seconds:.1f}s (C={best_c:g})", train_seconds=seconds)
        return {
            "validation_micro_f1": val_f1 if val else None,
            "train_size": len(train),
            "validation_size": len(val),
            "fitted_on_size": len(train) + (len(val) if fitted_on[-1] == "validation" else 0),
            "C": best_c,
            "grid": tried,
            "thresholds": threshold_map,
            "n_features": int(x_train.shape[1]),
            "train_seconds": seconds,
        }

    def load_predictor(self, model_dir: str, sha256: str = "") -> TextMultiClassifier:
        return TextMultiClassifier(*load_joblib(model_dir, MODEL_TYPE, MODEL_FILE, sha256))

    def evaluate(self, dataset: Dataset, predictor: Any, progress: Progress) -> Evaluation:
        mode = dataset.label_map.get("mode", "checklist")
        question = dataset.label_map.get("question")
        classes = list(dataset.label_map["classes"])
        everything = dataset.all_rows()
        progress(f"predicting {len(everything)} data rows", rows=len(everything))
        predictions = predictor.predict(everything)
        rows: list[dict[str, Any]] = []
        for r, p in zip(everything, predictions, strict=True):
            # An empty set is uploaded as nothing, which is how Labelbox itself represents an unticked
            # checklist (and what convert reads back as "no class applies").
            chosen = {c: p["scores"][c] for c in p["labels"]}
            if mode == "radios":
                rows.extend(multilabel.radio_rows(r["data_row_id"], chosen))
            elif chosen:
                rows.append(multilabel.checklist_row(str(question), r["data_row_id"], chosen))
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
        m["empty_prediction_rows"] = sum(1 for p in predictions if not p["labels"])
        m["mode"] = mode
        progress(
            f"test micro_f1={m['micro_f1']:.4f} macro_f1={m['macro_f1']:.4f} "
            f"subset_accuracy={m['subset_accuracy']:.4f} on {len(y_true)} rows",
            micro_f1=m["micro_f1"],
            macro_f1=m["macro_f1"],
            test_size=len(y_true),
        )
        summary = {
            **multilabel.summary(m),
            "predicted_rows": len(predictions),
            "empty_prediction_rows": m["empty_prediction_rows"],
        }
        return Evaluation(metrics=m, summary=summary, prediction_rows=rows)


TASK = TextMultiClassification()
