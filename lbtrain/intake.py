"""Starting runs: webhooks, the REST API and the runs topic all end here."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from lbtrain import domain as d
from lbtrain import pipelines, prelabel, reporting
from lbtrain.deps import Deps
from lbtrain.messages import ID_PATTERN, BadMessage, RunRequest, StepMessage

if TYPE_CHECKING:  # the store (google-cloud-firestore) loads on first use, not at cold start
    from lbtrain.adapters.firestore_store import CreateResult

log = logging.getLogger("lbtrain.intake")
_ID = ID_PATTERN  # ids become Firestore document ids and file names (lbtrain/messages.py)


def is_valid_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))


def validate(req: RunRequest) -> pipelines.ModelType:
    """Raise BadMessage naming the problem; nothing is written for a bad request."""
    try:
        model_type = pipelines.get(req.model_type)
    except pipelines.UnknownModelType as exc:
        raise BadMessage(str(exc)) from None
    if not _ID.fullmatch(req.model_run_id):
        raise BadMessage(f"model_run_id {req.model_run_id!r} is not a valid id")
    if req.model_id and not _ID.fullmatch(req.model_id):
        raise BadMessage(f"model_id {req.model_id!r} is not a valid id")
    return model_type


def prelabel_settings(deps: Deps, model_type: str, params: dict[str, Any], trigger: dict[str, Any]
                      ) -> dict[str, Any] | None:
    """The run's prelabel step settings (lbtrain/prelabel.py), or None; bad settings are a BadMessage."""
    from lbtrain import model_options

    try:
        options = model_options.for_type(deps.config.model_options, model_type).prelabel
        return prelabel.resolve(params, trigger, options)
    except prelabel.PrelabelError as exc:
        raise BadMessage(str(exc)) from None


def publish_step(deps: Deps, run_id: str, stage: str, attempt: int, action: str = "launch") -> None:
    msg = StepMessage(run_id, stage, attempt, action)
    deps.bus.publish(f"step-{stage}", msg.to_dict(), msg.attributes())


class Answered:
    """What this process answered lately, so that a redelivery to the same instance needs no transaction.

    - delivery key → run id: a committed `deliveries/` document never changes its run, and it lives
      for days (DELIVERY_TTL); an entry here lives `ttl` seconds and is written only after the commit;
    - run id → the first stage whose step message this process published and saw acknowledged.

    Bounded (oldest dropped first). Another instance knows none of it and takes the transactional path,
    which gives the same answer."""

    def __init__(self, limit: int = 20_000, ttl: float = 600.0):
        self.limit, self.ttl = limit, ttl
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._offered: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def _put(self, table: OrderedDict[str, tuple[float, str]], key: str, value: str) -> None:
        with self._lock:
            table[key] = (time.monotonic() + self.ttl, value)
            table.move_to_end(key)
            while len(table) > self.limit:
                table.popitem(last=False)

    def _get(self, table: OrderedDict[str, tuple[float, str]], key: str) -> str | None:
        with self._lock:
            entry = table.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del table[key]
                return None
            return entry[1]

    def remember(self, delivery_key: str, run_id: str) -> None:
        self._put(self._runs, delivery_key, run_id)

    def run_for(self, delivery_key: str) -> str | None:
        return self._get(self._runs, delivery_key)

    def offered(self, run_id: str, stage: str) -> None:
        self._put(self._offered, run_id, stage)

    def was_offered(self, run_id: str) -> str | None:
        return self._get(self._offered, run_id)


def start_run(deps: Deps, req: RunRequest, *, trigger: dict[str, Any], delivery_key: str | None) -> CreateResult:
    from lbtrain import admission

    model_type = validate(req)
    settings = prelabel_settings(deps, req.model_type, req.params, trigger)
    limited = admission.enabled(deps.config)
    answered = deps.answered
    known = answered.run_for(delivery_key) if delivery_key else None
    if known is not None:  # a redelivery of a delivery this process answered: its run, no transaction
        from lbtrain.adapters.firestore_store import CreateResult

        result = CreateResult(known, False, "duplicate delivery")
    else:
        first = reporting.status_entry("EXPORTING_DATA")
        result = deps.store.create_run(
            run_id=d.new_run_id(), model_type=req.model_type, model_run_id=req.model_run_id,
            model_id=req.model_id, params=prelabel.with_settings(req.params, settings), trigger=trigger,
            stages=prelabel.stages_for(model_type.stages, settings),
            delivery_key=delivery_key, admission_hold=limited, first_status=first)
        if delivery_key:
            answered.remember(delivery_key, result.run_id)
    if result.created:
        # Told before the first step is offered: a fast etl job reports PREPARING_DATA, and Labelbox
        # shows the last status it was given. The run's history holds the entry already.
        reporting.report_recorded(deps, req.model_run_id, first, run_id=result.run_id)
        if limited:  # a slot now (its first step published) or the queue
            admission.start(deps, result.run_id)
        else:
            publish_step(deps, result.run_id, model_type.stages[0], 1)
            answered.offered(result.run_id, model_type.stages[0])
        log.info("run %s started for model run %s (%s)", result.run_id, req.model_run_id, req.model_type,
                 extra={"fields": {"run_id": result.run_id, "source": trigger.get("source")}})
    else:
        log.info("no new run: %s (run %s)", result.reason, result.run_id,
                 extra={"fields": {"run_id": result.run_id}})
        redrive_pending(deps, result.run_id)
    return result


def redrive_pending(deps: Deps, run_id: str) -> None:
    """A redelivered request may follow a publish that failed: offer the current step again.
    Duplicate step messages are harmless (the launcher's claim is transactional).

    The run document alone settles the common case: a run still QUEUED at the first stage, never
    changed since it was created (`updated_at` is `created_at`: not claimed or retried; no admission), whose
    first step message this process published and saw acknowledged, has its message in Pub/Sub already."""
    run = deps.store.get_run(run_id)
    if run["status"] not in (d.QUEUED, d.RUNNING):
        return
    if run.get("admission") == d.ADMISSION_QUEUED:  # waits for a slot; enter it again if that was lost
        from lbtrain import admission

        admission.start(deps, run_id)
        return
    if run["status"] == d.QUEUED and run.get("updated_at") == run.get("created_at") and not run.get("admission") \
            and deps.answered.was_offered(run_id) == run["stage"]:
        return
    step = deps.store.get_step(run_id, run["stage"])
    if step["state"] == d.PENDING:
        publish_step(deps, run_id, run["stage"], step["attempt"])
