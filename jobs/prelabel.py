"""prelabel: the deployed model pre-labels a project's unlabeled data rows and orders its labeling queue.

After deploy, for runs that have the step (lbtrain/prelabel.py): the project's unlabeled rows are read
from Labelbox's project export (streamed), fetched and predicted `batch_size` at a time through the
model's serving path (`parse_instances` + `predict`, as the endpoint does), so memory stays bounded by
a batch and the (row id → uncertainty) table. Predictions at or above `min_confidence` become
model-assisted-labeling imports named `lbtrain-<run>-prelabels-<n>` (a retried attempt finds its earlier
imports by name and does not make them again); every predicted row gets a queue priority, most uncertain
first with a share of random picks (jobs/active.py). The run's own model does it, whether or not deploy
promoted it (`model_deployed`): it learned from the project's latest labels, while the champion is per
model type. A row whose media cannot be fetched or decoded is counted, named in prelabel.json and left
unprioritised.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobs import active
from jobs.context import StageContext, StageResult, safe_name
from jobs.tasks.base import LABEL_MAP_FILE, MODEL_DIR, JobError
from lbtrain import pipelines, storage
from lbtrain.prelabel import PrelabelError, normalize

MAX_NAMED_FAILURES = 20


def import_name(run_id: str, index: int) -> str:
    return safe_name("lbtrain", run_id, "prelabels", f"{index:05d}")


def chunks(rows: Iterable[dict[str, Any]], size: int, limit: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for n, row in enumerate(rows):
        if n >= limit:
            break
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _row_id(row: dict[str, Any]) -> str:
    return str((row.get("data_row") or {}).get("id") or "")


def _instances(media: str, rows: list[dict[str, Any]]) -> list[tuple[str, Any, str]]:
    """(data row id, serving instance or None, text or the reason it failed) per row, fetched under the
    job's fetch policy (lbtrain/fetch.py), a few at a time."""
    from jobs.tasks import exportv2, images

    def one(row: dict[str, Any]) -> tuple[str, Any, str]:
        row_id = _row_id(row)
        value = (row.get("data_row") or {}).get("row_data")
        if not row_id or not isinstance(value, str) or not value.strip():
            return row_id, None, "no row_data"
        try:
            if media == "text":
                text = exportv2.fetch_text(value.strip()) if exportv2.is_url(value) else value
                return row_id, {"text": text}, text
            data = images.read_media(value.strip())
            return row_id, {"b64": base64.b64encode(data).decode("ascii")}, ""
        except exportv2.FetchError as exc:
            return row_id, None, f"fetch failed: {exc}"[:300]

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, rows))


def _predict(predictor: Any, instances: list[Any]) -> list[dict[str, Any] | str]:
    """Predictions per instance; an instance the model cannot read (bad image, too big) is its error."""
    try:
        return list(predictor.predict(predictor.parse_instances(instances)))
    except ValueError:
        if len(instances) == 1:
            raise
    out: list[dict[str, Any] | str] = []
    for inst in instances:
        try:
            out.extend(predictor.predict(predictor.parse_instances([inst])))
        except ValueError as exc:
            out.append(f"unreadable: {exc}"[:300])
    return out


def run(ctx: StageContext) -> StageResult:  # noqa: PLR0915 - one pass over the export, kept in one place
    try:
        settings = normalize(ctx.params.get("prelabel", {}))
    except PrelabelError as exc:
        raise JobError(str(exc)) from None
    project_id = str(settings.get("project_id") or "")
    if not project_id:
        raise JobError("params.prelabel has no project_id: no project to pre-label")
    report_uri = ctx.out("prelabel.json")
    # The run's own model, trained on the project's latest labels, whether or not deploy promoted it
    # (the champion is per model type and may come from another project): the summary says which.
    deployed = bool((ctx.upstream_outputs("deploy").get("metrics") or {}).get("deployed"))
    model_type = ctx.model_type
    media = pipelines.get(model_type).media
    predictor = ctx.task.load_predictor(ctx.upstream_artifact("train", "model", MODEL_DIR), ctx.model_sha256)
    label_map = storage.read_json(storage.join(ctx.upstream_uri("etl"), LABEL_MAP_FILE))
    question = str(label_map.get("question") or "")
    no_format = ""
    if model_type in active.MULTI_LABEL and label_map.get("mode") == "radios":
        no_format = "several radio questions: no pre-label format (priorities only)"
    thresholds = getattr(predictor, "thresholds", None)
    thresholds = thresholds if isinstance(thresholds, dict) else 0.5
    utf16 = label_map.get("offsets") == "utf16"
    batch_size, lb = int(settings["batch_size"]), ctx.labelbox()

    scores: dict[str, float] = {}
    failed: dict[str, str] = {}
    pending: list[dict[str, Any]] = []
    counts = {"unlabeled": 0, "predicted": 0, "prelabeled_rows": 0, "prelabels": 0, "imports": 0}

    def flush(final: bool) -> None:
        while pending and (final or len(pending) >= batch_size):
            batch, pending[:] = pending[:batch_size], pending[batch_size:]
            name = import_name(ctx.run_id, counts["imports"])
            lb.import_prelabels(project_id, name, batch)
            counts["imports"] += 1
            ctx.progress(f"imported {len(batch)} pre-labels as {name}", import_name=name, rows=len(batch))

    ctx.progress(f"pre-labeling the unlabeled data rows of project {project_id}", project_id=project_id)
    for rows in chunks(lb.unlabeled_rows(project_id), batch_size, int(settings["max_rows"])):
        counts["unlabeled"] += len(rows)
        fetched = _instances(media, rows)
        ok = [(rid, inst, text) for rid, inst, text in fetched if inst is not None]
        for rid, inst, why in fetched:
            if inst is None:
                failed[rid or f"row {len(failed)}"] = why
        predictions = _predict(predictor, [inst for _, inst, _ in ok]) if ok else []
        for (rid, _, text), prediction in zip(ok, predictions, strict=True):
            if isinstance(prediction, str):
                failed[rid] = prediction
                continue
            counts["predicted"] += 1
            scores[rid] = active.uncertainty(model_type, prediction, thresholds)
            if no_format:
                continue
            made = active.prelabel_annotations(model_type, ctx.run_id, rid, prediction, question=question,
                                               min_confidence=settings["min_confidence"], thresholds=0.0,
                                               text=text, utf16=utf16)
            if made:
                counts["prelabeled_rows"] += 1
                counts["prelabels"] += len(made)
                pending.extend(made)
        flush(final=False)
        ctx.progress(f"{counts['predicted']} of {counts['unlabeled']} unlabeled rows predicted, "
                     f"{counts['prelabeled_rows']} pre-labeled", **counts)
    flush(final=True)

    order = active.queue_order(scores, float(settings["random_share"]), seed=ctx.run_id)
    if order:
        lb.set_priorities(project_id, active.priorities(order))
    summary = {"project_id": project_id, **counts, "prioritised": len(order), "failed_rows": len(failed),
               "model_deployed": deployed}
    if no_format:
        summary["skipped"] = no_format
    storage.write_json(report_uri, {
        **summary, "min_confidence": settings["min_confidence"], "random_share": settings["random_share"],
        "queue_head": order[:20], "failures": dict(list(failed.items())[:MAX_NAMED_FAILURES])})
    ctx.progress(f"pre-labeled {counts['prelabeled_rows']} rows ({counts['prelabels']} annotations in "
                 f"{counts['imports']} imports), prioritised {len(order)}, {len(failed)} failed", **summary)
    return StageResult(uris={"report": report_uri}, metrics=summary)
