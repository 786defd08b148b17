"""The Firestore state dashboard (docs/architecture.md §1, §6): runs, stages, timings, metrics, errors, actions.

Server-rendered Jinja pages that work without JavaScript; a small script polls the JSON
endpoints under `/dashboard/api/` every few seconds and swaps in the re-rendered live part, so a
run appears and moves through its stages while you watch (short polls, not SSE: no request is
held open on a Cloud Run instance, and every poll is one cheap Firestore query).

Reading needs no token (in the cloud the service sits behind IAP / Cloud Run auth; locally reading
is open). Cancel and retry need the API token, which the user types into the page: it is sent as
`Authorization: Bearer` by the script and never rendered by the server.
Import-light on purpose (cold start): no aiplatform, no ML, Firestore only once a request reads.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup

from lbtrain import domain as d
from lbtrain import pipelines, storage
from lbtrain import progress as progressmod
from lbtrain.api import dashview as v
from lbtrain.api.common import ApiError, before_cursor, deps_of, error, require_token
from lbtrain.errors import NotFound

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates",
               static_folder="static/dashboard", static_url_path="/static")

PAGE_SIZE = 25
MAX_PAGE_SIZE = 200
MODEL_PAGE_RUNS = 200  # newest runs of a model type drawn on its chart
POLL_MS = 2000
LOG_TAIL_BYTES = 256 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@bp.after_request
def _headers(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "dashboard.static":
        resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.app_template_global()
def now_utc() -> datetime:
    return d.now()


@bp.app_template_global()
def model_types_nav() -> list[str]:
    return pipelines.names()


@bp.app_template_filter("when")
def _when(value: Any) -> str:
    return v.fmt_time(value)


@bp.app_template_filter("iso")
def _iso(value: Any) -> str:
    return v.iso(value)


@bp.app_template_filter("num")
def _num(value: Any) -> str:
    return v.fmt_number(value)


@bp.app_template_filter("badge")
def _badge(status: str) -> str:
    return v.BADGE.get(status or "", "muted")


@bp.errorhandler(ApiError)
def _refused(exc: ApiError) -> Any:
    """A refused request (a bad id in the path, a bad filter) is the error page on a page, JSON under /api/."""
    if request.path.startswith("/dashboard/api/"):
        resp, status = error(exc.status, exc.message)
        resp.headers.update(exc.headers)
        return resp, status
    return _error_page(exc.status, exc.message)


def _store() -> Any:
    return deps_of(current_app).store


# -- runs list ------------------------------------------------------------------------------------

def _list_args() -> dict[str, Any]:
    """Validated filters and cursor from the query string (400 names the bad value)."""
    args = request.args
    status = (args.get("status") or "").upper() or None
    if status and status not in d.RUN_STATUSES:
        raise ApiError(400, f"unknown status {status!r}; one of {', '.join(d.RUN_STATUSES)}")
    model_type = args.get("model_type") or None
    if model_type and model_type not in pipelines.names():
        raise ApiError(400, f"unknown model type {model_type!r}; known: {', '.join(pipelines.names())}")
    try:
        limit = max(1, min(int(args.get("limit") or PAGE_SIZE), MAX_PAGE_SIZE))
    except ValueError:
        raise ApiError(400, "limit must be an integer") from None
    model_run_id = (args.get("model_run_id") or "").strip() or None
    return {"status": status, "model_type": model_type, "model_run_id": model_run_id,
            "before": before_cursor(args.get("before")), "limit": limit}


def _runs_page(f: dict[str, Any]) -> dict[str, Any]:
    """One page, newest first; one extra document tells whether an older page exists."""
    runs = _store().list_runs(status=f["status"], model_type=f["model_type"], model_run_id=f["model_run_id"],
                              limit=f["limit"] + 1, before=f["before"])
    more = len(runs) > f["limit"]
    runs = runs[: f["limit"]]
    now = d.now()
    for run in runs:
        run["_duration"] = v.run_duration(run, now)
        known = run.get("model_type") in pipelines.names()
        metric = pipelines.get(run["model_type"]).headline_metric if known else ""
        run["_headline"] = (metric, v.headline_value(run, metric)) if metric else ("", None)
    query = {k: f[k] for k in ("status", "model_type", "model_run_id") if f[k]}
    if f["limit"] != PAGE_SIZE:
        query["limit"] = f["limit"]
    poll_query = {**query, **({"before": f["before"]} if f["before"] else {})}
    return {"runs": runs, "next_before": runs[-1]["run_id"] if more and runs else None, "query": query,
            "poll_query": poll_query, "filters": f}


def _version(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:16]


def _list_context() -> dict[str, Any]:
    return {"statuses": d.RUN_STATUSES, "model_types": pipelines.names(), "poll_ms": POLL_MS}


@bp.get("/")
def runs_page():  # noqa: ANN201
    try:
        f = _list_args()
    except ApiError as exc:
        return _error_page(exc.status, exc.message)
    page = _runs_page(f)
    live = Markup(render_template("dashboard/_runs_live.html", page=page))
    return render_template("dashboard/runs.html", page=page, live=live, version=_version(live), **_list_context())


@bp.get("/api/runs")
def runs_json():  # noqa: ANN201
    page = _runs_page(_list_args())
    html = render_template("dashboard/_runs_live.html", page=page)
    return jsonify({"html": html, "version": _version(html), "next_before": page["next_before"],
                    "run_ids": [r["run_id"] for r in page["runs"]],
                    "statuses": {r["run_id"]: r["status"] for r in page["runs"]}})


# -- one run --------------------------------------------------------------------------------------

def _labelbox_history(run: dict[str, Any]) -> list[dict[str, Any]]:
    """What the run reported to Labelbox: recorded on the run document (reporting.py); runs from
    before that, on the file-backed Labelbox, are read from its status.jsonl."""
    history = run.get("labelbox_statuses")
    if history:
        return list(history)
    deps = deps_of(current_app)
    if deps.config.labelbox_backend != "file":
        return []
    try:
        entries = deps.labelbox.statuses(run["model_run_id"])
    except (OSError, ValueError):
        return []
    return [e for e in entries if (e.get("metadata") or {}).get("lbtrain_run_id") == run["run_id"]]


def _run_context(run_id: str) -> dict[str, Any] | None:
    store = _store()
    try:
        run = store.get_run(run_id)
    except NotFound:
        return None
    steps = store.get_steps(run_id)
    now = d.now()
    metrics = run.get("metrics") or {}
    columns, class_rows = v.per_class(metrics)
    bar_key = v.bar_metric(columns)
    bars = v.svg_bars([(name, row.get(bar_key)) for name, row in class_rows],
                      title=f"per-class {bar_key}") if bar_key else None
    known = run.get("model_type") in pipelines.names()
    active = run.get("status") in d.ACTIVE_RUN_STATUSES
    progress = progressmod.of_running_step(deps_of(current_app).config.artifact_root, run, steps) if active else None
    progress_chart = None
    if progress and any(p["loss"] is not None or p["value"] is not None for p in progress["history"]):
        progress_chart = v.svg_progress(progress["history"], total=progress["total"], unit=progress["unit"],
                                        metric=progress["metric"])
    return {
        "progress": progress, "progress_text": progressmod.describe(progress) if progress else "",
        "progress_chart": progress_chart,
        "run": run, "rows": v.stage_rows(run, steps, now), "duration": v.run_duration(run, now),
        "scalars": v.scalar_metrics(metrics), "class_columns": columns, "class_rows": class_rows,
        "bar_key": bar_key, "bars": bars, "labelbox": _labelbox_history(run),
        "headline_metric": pipelines.get(run["model_type"]).headline_metric if known else "",
        "active": active, "poll_ms": POLL_MS, "train_device": _train_device(steps),
    }


DEVICE_KEYS = ("device", "device_name", "device_count", "device_memory_gb", "device_precision", "processes",
               "resumed_from_attempt", "resumed_from_epoch")


def _train_device(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the train step ran and whether it resumed a checkpoint (its step metrics, from the
    job's outputs.json): shown on the run page."""
    for step in steps:
        if step.get("stage") == "train":
            metrics = step.get("metrics") or {}
            return {k: metrics[k] for k in DEVICE_KEYS if metrics.get(k) is not None}
    return {}


@bp.get("/runs/<run_id>")
def run_page(run_id: str):  # noqa: ANN201
    ctx = _run_context(run_id)
    if ctx is None:
        return _error_page(404, f"run {run_id!r} not found")
    live = Markup(render_template("dashboard/_run_live.html", **ctx))
    return render_template("dashboard/run.html", live=live, version=_version(live), **ctx)


@bp.get("/api/runs/<run_id>")
def run_json(run_id: str):  # noqa: ANN201
    ctx = _run_context(run_id)
    if ctx is None:
        raise ApiError(404, f"run {run_id!r} not found")
    html = render_template("dashboard/_run_live.html", **ctx)
    run = ctx["run"]
    return jsonify({"html": html, "version": _version(html), "status": run.get("status"), "stage": run.get("stage"),
                    "active": ctx["active"], "steps": {r.stage: r.state for r in ctx["rows"]}})


@bp.get("/runs/<run_id>/steps/<stage>/log")
def job_log(run_id: str, stage: str):  # noqa: ANN201
    """A local job's log (the local stack's stand-in for the Vertex console link)."""
    try:
        step = _store().get_step(run_id, stage)
    except NotFound:
        return _error_page(404, f"no stage {stage!r} in run {run_id!r}")
    job = step.get("job") or {}
    path = _local_log_path(deps_of(current_app).config.artifact_root, job)
    if path is None:
        if job.get("url", "").startswith("https://"):
            return redirect(job["url"])
        return _error_page(404, f"stage {stage!r} of run {run_id!r} has no local job log")
    if not path.is_file():
        return _error_page(404, f"the log of job {job.get('id')!r} is not there (yet): {path.name}")
    with path.open("rb") as fh:
        size = path.stat().st_size
        fh.seek(max(0, size - LOG_TAIL_BYTES))
        text = fh.read().decode("utf-8", errors="replace")
    head = f"[last {LOG_TAIL_BYTES // 1024} KiB of {size} bytes]\n" if size > LOG_TAIL_BYTES else ""
    return Response(head + text, mimetype="text/plain")


def _local_log_path(artifact_root: str, job: dict[str, Any]) -> Path | None:
    """`{ARTIFACT_ROOT}/local-jobs/{job id}/job.log`, from the job id (never from a stored URL)."""
    job_id = str(job.get("id") or "")
    if job.get("backend") != "local" or not job_id or "/" in job_id or job_id.startswith(".") \
            or storage.is_gcs(artifact_root):
        return None
    return storage.local_path(artifact_root).resolve() / "local-jobs" / job_id / "job.log"


# -- actions (token required) ------------------------------------------------------------------------

@bp.post("/api/runs/<run_id>/<action>")
def run_action(run_id: str, action: str):  # noqa: ANN201
    """Cancel or retry through the REST API's own handlers, after the same token check."""
    from lbtrain.api import ingress

    handlers = {"cancel": ingress.cancel_run, "retry": ingress.retry_run}
    if action not in handlers:
        raise ApiError(404, f"unknown action {action!r}; one of cancel, retry")
    require_token(deps_of(current_app).config)
    return handlers[action](run_id)


# -- model type -------------------------------------------------------------------------------------

def _champion(model_type: str) -> tuple[dict[str, Any] | None, str]:
    """`{ARTIFACT_ROOT}/models/<type>/champion.json` (jobs/deploy.py), or why it can't be shown."""
    uri = storage.join(deps_of(current_app).config.artifact_root, "models", model_type, "champion.json")
    try:
        return (storage.read_json(uri), "") if storage.exists(uri) else (None, "no model deployed yet")
    except Exception as exc:  # noqa: BLE001 - the page still shows the runs
        return None, f"champion record unreadable: {type(exc).__name__}: {exc}"


@bp.get("/models/<model_type>")
def model_page(model_type: str):  # noqa: ANN201
    if model_type not in pipelines.names():
        return _error_page(404, f"unknown model type {model_type!r}")
    metric = pipelines.get(model_type).headline_metric
    runs = _store().list_runs(model_type=model_type, limit=MODEL_PAGE_RUNS)
    points = []
    for run in runs:
        value, at = v.headline_value(run, metric), v.as_datetime(run.get("created_at"))
        if value is not None and at is not None:
            labels = run.get("examples")
            points.append((at, value, run["run_id"], labels if isinstance(labels, int) else None))
    champion, champion_note = _champion(model_type)
    champ_run = str((champion or {}).get("run_id") or "")
    chart = v.svg_series([p[:3] for p in points], title=f"{metric} of each run over time", champion_run=champ_run)
    label_points = [(p[3], p[1], p[2]) for p in points if p[3] is not None]
    labels_chart = v.svg_by_labels(label_points, title=f"{metric} by number of labeled examples",
                                   champion_run=champ_run)
    return render_template("dashboard/model.html", model_type=model_type, metric=metric, chart=chart,
                           label_points=label_points, labels_chart=labels_chart,
                           points=sorted(points, key=lambda p: p[0], reverse=True), champion=champion,
                           champion_note=champion_note,
                           runs_shown=len(runs), limit=MODEL_PAGE_RUNS,
                           description=pipelines.get(model_type).description)


def _error_page(status: int, message: str) -> tuple[str, int]:
    return render_template("dashboard/error.html", status=status, message=message), status


def url_for_page(**query: Any) -> str:
    return url_for("dashboard.runs_page", **{k: val for k, val in query.items() if val})


bp.add_app_template_global(url_for_page, "runs_url")
