"""Text, one radio answer per data row: TF-IDF (word 1–2-grams + char_wb 2–5-grams) + logistic
regression, C picked on the validation split (docs/architecture.md §3).

sklearn/joblib are imported inside the functions that need them: importing this module is
cheap, so `jobs.main` can fail fast on bad inputs and `jobs.serving` stays light until loading.

Run params understood (all optional, from the run request's `params`):
  question             radio question to learn (default: the first one answered in the export)
  C                    number or list of numbers to try (default [1, 3, 10, 30])
  class_weight         "balanced" (default) or "none"
  refit_on_validation  after picking C, refit on train+validation (default true)
  char_analyzer        "char_wb" (default) or "char" (~+0.005 macro F1 on Rotten Tomatoes, ~1.5x slower)
  max_iter             solver iterations (default 2000)
  seed                 random seed (default 0)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jobs.tasks import classification, exportv2, text_rows
from jobs.tasks.base import (
    MODEL_META_FILE,
    Dataset,
    DatasetError,
    Evaluation,
    ParamError,
    Progress,
    SnapshotRows,
    load_joblib,
    save_joblib,
)
from lbtrain import storage
from lbtrain.progress import Counter

MODEL_TYPE = "text_single_classification"
MODEL_FILE = "model.joblib"
DEFAULT_C = (1.0, 3.0, 10.0, 30.0)


# --- params -------------------------------------------------------------------------------


def _train_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the training params; a bad value is a ParamError naming the param."""
    raw_c = params.get("C", list(DEFAULT_C))
    grid = raw_c if isinstance(raw_c, list) else [raw_c]
    if not grid or not all(isinstance(c, int | float) and not isinstance(c, bool) and c > 0 for c in grid):
        raise ParamError(f"param C must be a positive number or a list of them, not {raw_c!r}")
    class_weight = params.get("class_weight", "balanced")
    if class_weight in (None, "none", "None"):
        class_weight = None
    elif class_weight != "balanced":
        raise ParamError(f'param class_weight must be "balanced" or "none", not {class_weight!r}')
    out = {"C": sorted(float(c) for c in grid), "class_weight": class_weight}
    for name, default in (("max_iter", 2000), ("seed", 0)):
        value = params.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ParamError(f"param {name} must be a non-negative integer, not {value!r}")
        out[name] = value
    refit = params.get("refit_on_validation", True)
    if not isinstance(refit, bool):
        raise ParamError(f"param refit_on_validation must be true or false, not {refit!r}")
    out["refit_on_validation"] = refit
    analyzer = params.get("char_analyzer", "char_wb")
    if analyzer not in ("char_wb", "char"):
        raise ParamError(f'param char_analyzer must be "char_wb" or "char", not {analyzer!r}')
    out["char_analyzer"] = analyzer
    return out


# --- model --------------------------------------------------------------------------------


def _features(char_analyzer: str = "char_wb") -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            (
                "word",
                TfidfVectorizer(
                    analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1, strip_accents="unicode"
                ),
            ),
            (
                "char",
                TfidfVectorizer(
                    analyzer=char_analyzer,
                    ngram_range=(2, 5),
                    sublinear_tf=True,
                    min_df=2,
                    strip_accents="unicode",
                ),
            ),
        ]
    )


def _classifier(c: float, cfg: Mapping[str, Any]) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=c, class_weight=cfg["class_weight"], max_iter=cfg["max_iter"], random_state=cfg["seed"]
    )


class TextClassifier:
    """A fitted sklearn pipeline (text → class probabilities) plus model.json metadata."""

    def __init__(self, pipeline: Any, meta: dict[str, Any]):
        self.pipeline = pipeline
        self.meta = meta
        self.classes: list[str] = [str(c) for c in pipeline.classes_]

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if not rows:
            return []
        proba = self.pipeline.predict_proba([str(r.get("text") or "") for r in rows])
        out = []
        for p in proba:
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
        return text_rows.parse_text_instances(instances)


# --- the task -----------------------------------------------------------------------------


class TextSingleClassification(text_rows.StreamingTextTask):
    model_type = MODEL_TYPE

    def convert_rows(
        self, rows: Iterable[Mapping[str, Any]], model_run_id: str, params: Mapping[str, Any], out: text_rows.Snapshot
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Export v2 rows → (label_map, stats), one pass over `rows`.

        Without a `question` param the question is the first radio question answered in the export,
        found on the way: rows before the first radio answer answer no radio question at all, so they
        are what they would be once the question is known (no_label / no_answer)."""
        question: str | None = params.get("question") or None

        def find_question(ref: exportv2.RowRef) -> None:
            nonlocal question
            if question is None and ref.run is not None:
                question = exportv2.first_radio_question_of_run(ref.run)

        radio_answers = exportv2.radio_answers_of_labels
        for usable_row in out.text_rows(rows, model_run_id, on_ref=None if question else find_question):
            row = usable_row.base()
            answers = radio_answers(usable_row.labels, question) if question else []
            if len(answers) > 1 and len(set(answers)) > 1:
                out.notes.add("conflicting_answers", usable_row.ref.data_row_id)  # first label wins
            reason = usable_row.split_reason
            if not answers:
                reason = "no_label" if not usable_row.labels else "no_answer"
            row["target"] = target = answers[0] if answers else None
            out.add(row, reason, (target,))
        out.require_rows(model_run_id)
        if not question:
            raise DatasetError(
                f"no radio classification is answered in model run {model_run_id!r}: "
                "text_single_classification needs one radio question"
            )
        classes = out.classes()
        stats = out.stats(model_run_id, question=question)
        out.done()
        return {"question": question, "classes": classes}, stats

    def validate(self, dataset: Dataset, min_examples: Mapping[str, int]) -> None:
        self.require_examples(dataset)
        classification.validate_counts(
            dataset.examples,
            dataset.label_map.get("classes", []),
            min_examples,
            model_run_id=dataset.stats.get("model_run_id", ""),
            # a streamed snapshot is not read back to be counted: its stats counted it
            per_class=dataset.stats.get("per_class") if isinstance(dataset.examples, SnapshotRows) else None,
        )

    def etl_summary(self, dataset: Dataset) -> dict[str, Any]:
        return {
            **super().etl_summary(dataset),
            "classes": len(dataset.label_map.get("classes", [])),
            "question": dataset.label_map.get("question", ""),
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
        features = _features(cfg["char_analyzer"])
        x_train = features.fit_transform([e["text"] for e in train])
        y_train = [e["target"] for e in train]
        progress(f"features: {x_train.shape[1]} tf-idf columns", n_features=int(x_train.shape[1]))
        x_val = features.transform([e["text"] for e in val]) if val else None
        y_val = [e["target"] for e in val]

        best: tuple[float, float, Any] | None = None  # (macro_f1, C, fitted classifier)
        tried = []
        refit = bool(cfg["refit_on_validation"] and val)
        fits = Counter(progress, "fit", (len(cfg["C"]) if val else 1) + refit, metric="macro_f1")
        for c in cfg["C"]:
            clf = _classifier(c, cfg).fit(x_train, y_train)
            if x_val is None:
                best = (0.0, c, clf)
                fits.step(f"C={c:g}: fitted (no validation split)", note=f"C={c:g}")
                break
            m = classification.metrics(y_val, [str(p) for p in clf.predict(x_val)], classes)
            tried.append({"C": c, "macro_f1": m["macro_f1"], "accuracy": m["accuracy"]})
            fits.step(f"C={c:g}: validation macro_f1={m['macro_f1']:.4f} accuracy={m['accuracy']:.4f}",
                      value=m["macro_f1"], note=f"C={c:g}", extra=tried[-1])
            if best is None or m["macro_f1"] > best[0]:  # ties keep the smaller C (stronger regularization)
                best = (m["macro_f1"], c, clf)
        assert best is not None
        best_c = best[1]
        val_metrics = next((t for t in tried if t["C"] == best_c), {"macro_f1": None, "accuracy": None})
        if refit:
            progress(f"refitting with C={best_c:g} on train+validation ({len(train) + len(val)} examples)")
            both = train + val
            pipeline = Pipeline(
                [("features", _features(cfg["char_analyzer"])), ("clf", _classifier(best_c, cfg))]
            )
            pipeline.fit([e["text"] for e in both], [e["target"] for e in both])
            fits.step(f"refitted with C={best_c:g} on train+validation", note=f"refit C={best_c:g} on train+validation")
            fitted_on = ["train", "validation"]
        else:
            pipeline = Pipeline([("features", features), ("clf", best[2])])
            fitted_on = ["train"]

        save_joblib(model_dir, pipeline, MODEL_FILE)
        seconds = round(time.monotonic() - started, 2)
        meta = {
            "model_type": MODEL_TYPE,
            "question": dataset.label_map["question"],
            "classes": [str(c) for c in pipeline.classes_],
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
            "validation_accuracy": val_metrics["accuracy"],
            "validation_macro_f1": val_metrics["macro_f1"],
            "train_size": len(train),
            "validation_size": len(val),
            "fitted_on_size": len(train) + (len(val) if fitted_on[-1] == "validation" else 0),
            "C": best_c,
            "grid": tried,
            "n_features": int(x_train.shape[1]),
            "train_seconds": seconds,
        }

    def load_predictor(self, model_dir: str, sha256: str = "") -> TextClassifier:
        return TextClassifier(*load_joblib(model_dir, MODEL_TYPE, MODEL_FILE, sha256))

    def evaluate(self, dataset: Dataset, predictor: Any, progress: Progress) -> Evaluation:
        return classification.evaluate_single_label(dataset, predictor, progress)


TASK = TextSingleClassification()
