"""train: read the etl snapshot, fit, write model/ and train_metrics.json (docs/architecture.md §4).

The model file's SHA-256 goes into outputs.json; job-events records it on the run and later stages
load the file only when it still has that digest (jobs/tasks/base.py, "the model file's digest").

The torch trainers checkpoint under `checkpoints/` of this attempt and resume from the newest
checkpoint an earlier attempt (or an earlier execution of this one) left (jobs/tasks/trainloop.py).

A model type configured for AutoML (MODEL_OPTIONS) trains on Vertex AI instead (jobs/automl.py).
"""

from __future__ import annotations

from jobs.context import StageContext, StageResult, scalars
from jobs.tasks.base import MODEL_DIR, ParamError, model_digest, read_dataset
from lbtrain import storage


def run(ctx: StageContext) -> StageResult:
    from jobs import automl

    if automl.enabled(ctx):
        return automl.train(ctx)
    from jobs.tasks import trainloop

    dataset = read_dataset(ctx.upstream_uri("etl"))
    model_dir = ctx.out(MODEL_DIR)
    resume = ctx.params.get("resume", True)
    if not isinstance(resume, bool):
        raise ParamError(f"param resume must be true or false, not {resume!r}")
    session = trainloop.session_for_job(ctx.config.artifact_root, ctx.run_id, ctx.stage, ctx.attempt,
                                        ctx.outputs_uri, max_hours=_max_hours(ctx), resume=resume)
    if not session.cache_dir:  # outputs on gs://: memmaps need a local file, removed below like the local one
        import dataclasses
        import tempfile

        session = dataclasses.replace(session, cache_dir=tempfile.mkdtemp(prefix="lbtrain-cache-"))
    try:
        with trainloop.using(session):
            metrics = ctx.task.train(dataset, model_dir, ctx.params, ctx.progress)
    finally:  # the decoded-image cache is rebuilt by a retry: it need not stay in the artifacts
        if session.cache_dir:
            import shutil

            shutil.rmtree(storage.local_path(session.cache_dir), ignore_errors=True)
    metrics_uri = ctx.out("train_metrics.json")
    storage.write_json(metrics_uri, metrics)
    return StageResult(uris={"model": model_dir, "train_metrics": metrics_uri}, metrics=scalars(metrics),
                       model_sha256=model_digest(model_dir))


def _max_hours(ctx: StageContext) -> float | None:
    """The stage's max_hours (JOB_MACHINES; the smallest of its fallback machines, since the job does
    not know which one it got): a GPU trainer's default time budget stays inside it."""
    try:
        from lbtrain.adapters.vertex_backend import machines_for

        return min(float(m.max_hours) for m in machines_for(ctx.config, ctx.model_type, ctx.stage))
    except (ValueError, TypeError):
        return None
