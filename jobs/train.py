"""train: read the etl snapshot, fit, write model/ and train_metrics.json (docs/architecture.md §4).

The model file's SHA-256 goes into outputs.json; job-events records it on the run and later stages
load the file only when it still has that digest (jobs/tasks/base.py, "the model file's digest").

A model type configured for AutoML (MODEL_OPTIONS) trains on Vertex AI instead (jobs/automl.py).
"""

from __future__ import annotations

from jobs.context import StageContext, StageResult, scalars
from jobs.tasks.base import MODEL_DIR, model_digest, read_dataset
from lbtrain import storage


def run(ctx: StageContext) -> StageResult:
    from jobs import automl

    if automl.enabled(ctx):
        return automl.train(ctx)
    dataset = read_dataset(ctx.upstream_uri("etl"))
    model_dir = ctx.out(MODEL_DIR)
    metrics = ctx.task.train(dataset, model_dir, ctx.params, ctx.progress)
    metrics_uri = ctx.out("train_metrics.json")
    storage.write_json(metrics_uri, metrics)
    return StageResult(uris={"model": model_dir, "train_metrics": metrics_uri}, metrics=scalars(metrics),
                       model_sha256=model_digest(model_dir))
