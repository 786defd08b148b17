"""The ingress: Labelbox's model-training integration (`GET /models`, `POST /model_run`), its label
webhooks (`POST /webhooks/labelbox`) and the REST API (`/runs…`, `/triggers…`). Kept import-light
for Cloud Run cold starts: no ML, no aiplatform.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint, current_app, jsonify, request

from lbtrain import domain as d
from lbtrain import pipelines, progress, signature
from lbtrain.api.common import (
    BUSY_RETRY_AFTER_SECONDS,
    MAX_ID_HEADER,
    ApiError,
    before_cursor,
    deps_of,
    id_header,
    json_body,
    jsonable,
    require_token,
)
from lbtrain.completion import finish_report
from lbtrain.deps import Deps
from lbtrain.errors import Busy, Conflict, NotFound
from lbtrain.intake import is_valid_id, publish_step, start_run, validate
from lbtrain.messages import BadMessage, RunRequest
from lbtrain.reporting import report_status

if TYPE_CHECKING:  # the store (google-cloud-firestore) loads on first use, not at cold start
    from lbtrain.adapters.firestore_store import CreateResult

bp = Blueprint("ingress", __name__)
log = logging.getLogger("lbtrain.ingress")

RUN_FIELDS_FROM_LABELBOX = {"modelType": "model_type", "modelRunId": "model_run_id", "modelId": "model_id"}


def _verified_body() -> bytes:
    """The raw body, after the signature check; 401 and nothing else happens otherwise."""
    deps = deps_of(current_app)
    body = request.get_data(cache=True)  # raises 413 beyond MAX_CONTENT_LENGTH
    problem = signature.verify(deps.config.labelbox_webhook_secret, body, request.headers)
    if problem:
        raise ApiError(401, problem)
    return body


def _json_object() -> dict[str, Any]:
    data = json_body()
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


@bp.get("/models")
def models():  # noqa: ANN201
    _verified_body()
    return jsonify({name: {"description": pipelines.get(name).description} for name in pipelines.names()})


@bp.post("/model_run")
def model_run():  # noqa: ANN201
    body = _verified_body()
    data = _json_object()
    missing = [k for k in ("modelType", "modelRunId") if not data.get(k)]
    if missing:
        raise ApiError(400, f"missing field(s): {', '.join(missing)}")
    for key in RUN_FIELDS_FROM_LABELBOX:
        if key in data and not isinstance(data[key], str):
            raise ApiError(400, f"field {key!r} must be a string")
    delivery = id_header("X-Labelbox-Id") or "body:" + hashlib.sha256(body).hexdigest()
    req = RunRequest(model_type=data["modelType"], model_run_id=data["modelRunId"],
                     model_id=data.get("modelId") or "", source="labelbox")
    return _start(req, {"source": "labelbox", "delivery_id": delivery,
                        "event": id_header("X-Labelbox-Event")}, f"labelbox:{delivery}",
                  tell_labelbox=True)


@bp.post("/webhooks/labelbox")
def label_webhook():  # noqa: ANN201
    """LABEL_CREATED / LABEL_UPDATED / LABEL_DELETED / WORKFLOW_ACTION → retraining rules. Unknown
    topics are acknowledged (Labelbox would otherwise retry them) and logged."""
    from lbtrain import triggers

    body = _verified_body()
    data = _json_object()
    topic = id_header("X-Labelbox-Event") or data.get("event") or data.get("topic") or ""
    if not isinstance(topic, str) or len(topic) > 64:
        raise ApiError(400, "the event (X-Labelbox-Event, or the body's event/topic) must be a name")
    delivery = id_header("X-Labelbox-Id") or "body:" + hashlib.sha256(body).hexdigest()
    try:
        answer = triggers.handle_label_delivery(deps_of(current_app), topic.upper(), data, delivery)
    except BadMessage as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(answer), 200


# Concurrent requests for one model run (Labelbox delivers a webhook several times at once; clients retry)
# meet in one transaction on the same documents. In this process they take turns (the emulator, like
# Firestore under heavy contention, aborts most of a crowd of transactions on one document); across
# instances, a contended start is retried with back-off, and a duplicate that still loses is answered with
# the run the winner made. Only when no run can be named is it a 503 with Retry-After: never a 500.
START_ATTEMPTS = 4
START_BACKOFF_SECONDS = 0.2


class KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list[Any]] = {}  # key → [lock, holders and waiters]

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


STARTING = "lbtrain_starting"  # app.extensions key: the app's KeyedLocks (one app = one instance)
bp.record_once(lambda state: state.app.extensions.setdefault(STARTING, KeyedLocks()))


def _start_run(deps: Deps, req: RunRequest, trigger: dict[str, Any], key: str | None) -> CreateResult:
    with current_app.extensions[STARTING].hold(req.model_run_id):
        for attempt in range(START_ATTEMPTS):
            try:
                return start_run(deps, req, trigger=trigger, delivery_key=key)
            except Busy as exc:
                log.info("starting a run for model run %s contended (attempt %d): %s", req.model_run_id,
                         attempt + 1, exc)
                existing = deps.store.run_for_request(key, req.model_run_id)
                if existing is not None:
                    return existing
                if attempt + 1 < START_ATTEMPTS:
                    time.sleep(START_BACKOFF_SECONDS * 2 ** attempt * (0.5 + random.random()))  # noqa: S311
    raise ApiError(503, f"model run {req.model_run_id} is being started by concurrent requests; retry shortly",
                   {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})


def _start(req: RunRequest, trigger: dict[str, Any], key: str | None, tell_labelbox: bool = False):  # noqa: ANN202
    deps = deps_of(current_app)
    try:
        validate(req)  # a bad request is refused before a lock is keyed on its model run id
        result = _start_run(deps, req, trigger, key)
    except BadMessage as exc:
        if tell_labelbox and is_valid_id(req.model_run_id):
            # Labelbox's UI never shows our HTTP answer: the model run's status carries the reason.
            report_status(deps, req.model_run_id, "FAILED", run_id="", error=f"refused: {exc}")
        raise ApiError(400, str(exc)) from None
    return jsonify({"run_id": result.run_id, "created": result.created,
                    **({"reason": result.reason} if result.reason else {})}), 200


# -- REST API ---------------------------------------------------------------------------------

@bp.before_request
def _auth() -> None:
    if request.path.startswith(("/runs", "/triggers")):
        require_token(deps_of(current_app).config)


@bp.post("/runs")
def create_run():  # noqa: ANN201
    data = _json_object()
    try:
        req = RunRequest.from_dict({**data, "source": "api"})
    except BadMessage as exc:
        raise ApiError(400, str(exc)) from None
    key = id_header("Idempotency-Key") or data.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or len(key) > MAX_ID_HEADER):
        raise ApiError(400, f"idempotency_key must be a string of at most {MAX_ID_HEADER} characters")
    return _start(req, {"source": "api", "delivery_id": key or ""}, f"api:{key}" if key else None)


@bp.get("/runs")
def list_runs():  # noqa: ANN201
    args = request.args
    status = args.get("status")
    if status and status.upper() not in d.RUN_STATUSES:
        raise ApiError(400, f"unknown status {status!r}; one of {', '.join(d.RUN_STATUSES)}")
    model_type = args.get("model_type")
    if model_type and model_type not in pipelines.names():
        raise ApiError(400, f"unknown model type {model_type!r}; known: {', '.join(pipelines.names())}")
    try:
        limit = max(1, min(int(args.get("limit", 50)), 500))
    except ValueError:
        raise ApiError(400, "limit must be an integer") from None
    runs = deps_of(current_app).store.list_runs(status=status.upper() if status else None, model_type=model_type,
                                                 model_run_id=args.get("model_run_id"), limit=limit,
                                                 before=before_cursor(args.get("before")))
    next_before = runs[-1]["run_id"] if len(runs) == limit else None
    return jsonify({"runs": jsonable(runs), "next_before": next_before})


def _run_view(run_id: str) -> dict[str, Any]:
    store = deps_of(current_app).store
    try:
        run = store.get_run(run_id)
    except NotFound:
        raise ApiError(404, f"run {run_id!r} not found") from None
    run["steps"] = store.get_steps(run_id)
    return jsonable(run)


@bp.get("/runs/<run_id>")
def get_run(run_id: str):  # noqa: ANN201
    """The run with its steps; while a step runs and its job reports progress (lbtrain/progress.py),
    also `progress`, read from the job's outputs dir (one storage read, no Firestore write)."""
    run = _run_view(run_id)
    if run.get("status") in d.ACTIVE_RUN_STATUSES:
        found = progress.of_running_step(deps_of(current_app).config.artifact_root, run, run["steps"])
        if found is not None:
            run["progress"] = found
    return jsonify(run)


@bp.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str):  # noqa: ANN201
    deps = deps_of(current_app)
    try:
        result = deps.store.cancel_run(run_id)
    except NotFound:
        raise ApiError(404, f"run {run_id!r} not found") from None
    except Conflict as exc:
        raise ApiError(409, str(exc)) from None
    if result.job is not None:
        run = deps.store.get_run(run_id)
        step = deps.store.get_step(run_id, run["stage"])
        publish_step(deps, run_id, run["stage"], step["attempt"], action="cancel")
    elif result.status == d.CANCELLED:
        finish_report(deps, deps.store.get_run(run_id), d.CANCELLED)
    return jsonify(_run_view(run_id)), 202 if result.status == d.CANCELLING else 200


@bp.post("/runs/<run_id>/retry")
def retry_run(run_id: str):  # noqa: ANN201
    from lbtrain import admission

    deps = deps_of(current_app)
    limited = admission.enabled(deps.config)
    try:
        stage, attempt = deps.store.retry_run(run_id, admission_hold=limited)
    except NotFound:
        raise ApiError(404, f"run {run_id!r} not found") from None
    except Conflict as exc:
        raise ApiError(409, str(exc)) from None
    # Labelbox hears of the retry before the job can report a later status.
    report_status(deps, deps.store.get_run(run_id)["model_run_id"],
                  "EXPORTING_DATA" if stage == "etl" else "TRAINING_MODEL",
                  run_id=run_id, metadata={"retry_from": stage, "attempt": str(attempt)})
    if limited:  # the retried run enters admission again: a slot now, or the queue
        admission.start(deps, run_id)
    else:
        publish_step(deps, run_id, stage, attempt)
    return jsonify(_run_view(run_id))


# -- retraining rules ---------------------------------------------------------------------------

def _project_id(project_id: str) -> str:
    if not is_valid_id(project_id):
        raise ApiError(400, f"project id {project_id!r} is not a valid id")
    return project_id


@bp.get("/triggers")
def list_triggers():  # noqa: ANN201
    return jsonify({"triggers": jsonable(deps_of(current_app).triggers.list_rules())})


@bp.get("/triggers/<project_id>")
def get_trigger(project_id: str):  # noqa: ANN201
    rule = deps_of(current_app).triggers.get_rule(_project_id(project_id))
    if rule is None:
        raise ApiError(404, f"no retraining rule for project {project_id!r}")
    return jsonify(jsonable(rule))


@bp.put("/triggers/<project_id>")
def put_trigger(project_id: str):  # noqa: ANN201
    from lbtrain.triggers import Rule

    _project_id(project_id)
    data = _json_object()
    if data.get("project_id") not in (None, project_id):
        raise ApiError(400, f"project_id {data['project_id']!r} does not match the URL's {project_id!r}")
    try:
        rule = Rule.from_dict(data)
    except BadMessage as exc:
        raise ApiError(400, str(exc)) from None
    saved = deps_of(current_app).triggers.put_rule(_project_id(project_id), rule.to_dict())
    return jsonify(jsonable(saved)), 200


@bp.delete("/triggers/<project_id>")
def delete_trigger(project_id: str):  # noqa: ANN201
    if not deps_of(current_app).triggers.delete_rule(_project_id(project_id)):
        raise ApiError(404, f"no retraining rule for project {project_id!r}")
    return jsonify({"deleted": project_id}), 200
