"""evaluate: predict every data row, score the test split, upload predictions (docs/architecture.md §4).

The upload name is derived from run id and attempt, so a re-run replaces its own upload
in the file-backed Labelbox instead of adding a second one. A model trained with AutoML
(MODEL_OPTIONS) is batch-predicted on Vertex AI and scored by the same task code (jobs/automl.py).
"""

from __future__ import annotations

from jobs.context import StageContext, StageResult, safe_name
from jobs.tasks.base import MODEL_DIR, dumps_jsonl, read_dataset
from lbtrain import storage


def upload_name(run_id: str, attempt: int) -> str:
    return safe_name("lbtrain", run_id, f"a{attempt}")


def run(ctx: StageContext) -> StageResult:
    from jobs import automl

    dataset = read_dataset(ctx.upstream_uri("etl"))
    extra: dict[str, object] = {}
    if automl.enabled(ctx):
        predictor, dataset, model_dir = automl.predictor(ctx, dataset)
        extra = automl.summary(predictor)
    else:
        model_dir = ctx.upstream_artifact("train", "model", MODEL_DIR)
        predictor = ctx.task.load_predictor(model_dir, ctx.model_sha256)
    evaluation = ctx.task.evaluate(dataset, predictor, ctx.progress)
    metrics_uri = ctx.out("metrics.json")
    predictions_uri = ctx.out("predictions.ndjson")
    storage.write_json(metrics_uri, evaluation.metrics)
    storage.write_text(predictions_uri, dumps_jsonl(evaluation.prediction_rows))
    name = upload_name(ctx.run_id, ctx.attempt)
    ctx.progress(
        f"uploading {len(evaluation.prediction_rows)} prediction/metric rows as {name}",
        upload_name=name,
        upload_rows=len(evaluation.prediction_rows),
    )
    ctx.labelbox().upload_predictions(ctx.model_run_id, name, evaluation.prediction_rows)
    return StageResult(
        uris={"metrics": metrics_uri, "predictions": predictions_uri, "model": model_dir},
        metrics={**evaluation.summary, **extra, "uploaded_rows": len(evaluation.prediction_rows), "upload_name": name},
    )
