"""etl: export the model run from Labelbox and write the dataset snapshot (docs/architecture.md §4).

The snapshot is written before validation so that a failed step still leaves stats.json
explaining which rows were skipped and why.
"""

from __future__ import annotations

from jobs.context import StageContext, StageResult
from jobs.tasks.base import write_dataset
from jobs.tasks.exportv2 import SpooledRows


def run(ctx: StageContext) -> StageResult:
    ctx.progress(f"exporting model run {ctx.model_run_id}", model_run_id=ctx.model_run_id)
    convert_to = getattr(ctx.task, "convert_to", None)
    if convert_to is not None:
        # One pass over the export as Labelbox sends it, writing the snapshot's rows as they are made.
        dataset = convert_to(ctx.labelbox().export_rows(ctx.model_run_id), ctx.model_run_id, ctx.params,
                             ctx.outputs_uri, ctx.progress)
        ctx.progress(f"exported {dataset.stats.get('rows', 0)} rows", rows=dataset.stats.get("rows", 0))
    else:
        # Streamed to a local file as Labelbox sends it, then read back a row at a time by the task.
        with SpooledRows(ctx.labelbox().export_rows(ctx.model_run_id), ctx.progress) as rows:
            ctx.progress(f"exported {len(rows)} rows", rows=len(rows))
            dataset = ctx.task.convert(rows, ctx.model_run_id, ctx.params, ctx.outputs_uri, ctx.progress)
    uris = write_dataset(ctx.outputs_uri, dataset)
    ctx.task.validate(dataset, ctx.config.min_examples)
    return StageResult(uris=uris, metrics=ctx.task.etl_summary(dataset))
