"""The `Labelbox` port on the real labelbox SDK 7.x (`LABELBOX_BACKEND=sdk`, docs/architecture.md §11).

Current APIs only: `model_run.export(...)` + `get_buffered_stream()`, `update_status`,
`add_predictions` (never `export_labels`/`LBV1Converter`/`NDJsonConverter.deserialize`).
The SDK is imported when the adapter is built, never at module import (ingress cold start).
Note: SDK 7.17's `ModelRunExportParams` has no `media_attributes`, so that flag never reaches
the wire for model-run exports (only includeModelRunDetails/includePredictions/...); the image
tasks already fall back to the image header for width/height.

Retries, and why not more. The SDK itself retries `InternalServerError` (5xx) and its
`TimeoutError` for up to 120 s with exponential backoff (google.api_core Retry around
`RequestClient.execute`); it does not retry 429 (`ApiLimitError`, or a plain "429 …"
`LabelboxError`), connection failures (`NetworkError`) or the plain GETs of export files.
This adapter retries exactly those, a few times with short exponential backoff, and never
what the SDK already retried (a 5xx that outlived the SDK's 120 s is not retried again).
Every HTTP request has a timeout: the SDK's 60 s per GraphQL call and 30 s per export file,
ours for the import status files; the export and import waits have deadlines.

Prediction uploads go in batches of at most `BATCH_ROWS` rows and `BATCH_BYTES` bytes of
NDJSON, far below Labelbox's limits (150K data rows per upload task, 256 MB direct upload,
docs.labelbox.com/docs/limits), so each import stays small and quick to validate and a
failed batch costs little. Batches after the first are named `<name>-p2`, `-p3`, ….
Rows Labelbox rejects are collected over all batches and raised as `PredictionUploadError`
(the evaluate step fails visibly, with the count and the first messages) after every batch
was tried; the accepted rows stay in the model run.

Retraining rules (`create_model_run`): the model run is found by name among the model's runs
before anything is created (also before each retried create, so a create whose answer was lost
is not repeated), filled with the project's labels (`upsert_labels`, an upsert), then the
model run is exported and only data rows whose split differs from `split_for(data_row_id)` are
assigned, in batches per split. Every step is idempotent, so calling it again for a model run
left half-done by a crash completes it.

The prelabel step. `unlabeled_rows`: `project.export(filters={"workflow_status": "ToLabel"},
params=<no label/performance/project details>)`, streamed like `export_rows`; rows that show a
label anyway are dropped here. As for model runs, SDK 7.17's project export has no
`media_attributes` flag. `import_prelabels`: `MALPredictionImport.create_from_objects` per batch
(same limits and `-p2` names as predictions, but a data row's rows are never split), each found
first by name (`MALPredictionImport.from_name`), also after a failed create: the SDK retries a 5xx
itself, and when the first create went through its retry is refused, so the existing import is
used and an import is never made twice. `set_priorities`: the SDK's bulk call,
`project.update_data_row_labeling_priority(UniqueIds(ids), priority)` (a task, waited for), sets
ONE priority for up to 1M rows; `set_labeling_parameter_overrides` sets one per row but inlines
every row in the query text. So the priorities go in bands (`priority_bands`: at most
`priority_bands` = 100 distinct values, log-spaced so the top of the queue stays exact), one call
per band and per `priority_batch_rows` (100,000) rows: a million ranked rows take about 100 calls.

The API key goes only into the SDK client (an Authorization header); it is never logged. The
webhook secret has to travel inside the query text (the SDK's `Webhook.create` inlines it), which
the SDK logs at DEBUG: while registering, those records are redacted, and error messages too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from lbtrain.adapters.labelbox import STATUSES, ModelRunNotFound, PredictionUploadError, clip_error, split_for

log = logging.getLogger("lbtrain.labelbox")
T = TypeVar("T")

BATCH_ROWS = 5000
BATCH_BYTES = 16 << 20
EXPORT_PARAMS = {"model_run_details": True, "media_attributes": True, "predictions": False}
MAX_SAMPLES = 5
# unlabeled_rows: the project's export without label/performance details, only rows still to label.
UNLABELED_EXPORT_PARAMS = {"data_row_details": False, "project_details": False, "label_details": False,
                           "performance_details": False, "attachments": False, "metadata_fields": False,
                           "embeddings": False, "interpolated_frames": False}
UNLABELED_EXPORT_FILTERS = {"workflow_status": "ToLabel"}
PRIORITY_BANDS = 100
PRIORITY_BATCH_ROWS = 100_000
INT32 = (-(2**31), 2**31 - 1)
SPLIT_BATCH_ROWS = 5000
# Loggers that may see the webhook secret: the SDK's request log (DEBUG, whole query) and ours.
SECRET_LOGGERS = ("lbox.request_client", "lbtrain.labelbox")
# Webhook.create/update put the URL and secret between double quotes in the query text.
_INLINE_SAFE = re.compile(r"[^\"\\\s\x00-\x1f\x7f]+")


class LabelboxApiError(RuntimeError):
    """A Labelbox call failed for good (after retries); the message names the model run."""


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def retryable(exc: BaseException) -> bool:
    """Failures worth another try that the SDK did not already retry itself."""
    import requests
    from lbox import exceptions as lbx

    if isinstance(exc, lbx.ApiLimitError | lbx.NetworkError):
        return True
    if isinstance(exc, lbx.LabelboxError) and re.match(r"429\b|.*too many requests", str(exc.message), re.I):
        return True
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return True  # plain GETs of export/import files: no SDK retry around them
    if isinstance(exc, requests.HTTPError):
        code = _status_code(exc)
        return code is not None and (code == 429 or 500 <= code < 600)
    return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class SdkLabelbox:
    """Labelbox through `labelbox.Client(api_key, endpoint, enable_experimental=True)`."""

    def __init__(self, api_key: str, endpoint: str = "", *, attempts: int = 4, backoff_seconds: float = 1.0,
                 export_timeout_seconds: float = 3600.0, import_timeout_seconds: float = 1800.0,
                 import_poll_seconds: float = 5.0, batch_rows: int = BATCH_ROWS, batch_bytes: int = BATCH_BYTES,
                 http_timeout_seconds: float = 60.0, task_timeout_seconds: float = 3600.0,
                 split_batch_rows: int = SPLIT_BATCH_ROWS, priority_bands: int = PRIORITY_BANDS,
                 priority_batch_rows: int = PRIORITY_BATCH_ROWS, sleep: Callable[[float], None] = time.sleep):
        if not api_key:
            raise ValueError("LABELBOX_BACKEND=sdk needs a Labelbox API key: set LABELBOX_API_KEY "
                             "(from Secret Manager in the cloud)")
        import labelbox

        kwargs: dict[str, Any] = {"endpoint": endpoint} if endpoint else {}
        self.client = labelbox.Client(api_key=api_key, enable_experimental=True, **kwargs)
        self.attempts = max(1, attempts)
        self.backoff_seconds = backoff_seconds
        self.export_timeout_seconds = export_timeout_seconds
        self.import_timeout_seconds = import_timeout_seconds
        self.import_poll_seconds = import_poll_seconds
        self.batch_rows, self.batch_bytes = batch_rows, batch_bytes
        self.http_timeout_seconds = http_timeout_seconds
        self.task_timeout_seconds = task_timeout_seconds  # upsert_labels / split assignment tasks
        self.split_batch_rows = max(1, split_batch_rows)
        self.priority_bands = max(1, priority_bands)
        self.priority_batch_rows = max(1, priority_batch_rows)
        self._sleep = sleep

    def __repr__(self) -> str:  # the client holds the key: never show it
        return f"SdkLabelbox(endpoint={self.client.endpoint!r})"

    # -- plumbing --------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` with our retries (429, network); the final failure names `what`."""
        from lbox.exceptions import ResourceNotFoundError

        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except (ModelRunNotFound, ResourceNotFoundError, PredictionUploadError, LabelboxApiError):
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised with context
                if not retryable(exc):
                    raise LabelboxApiError(f"Labelbox {what} failed: {_describe(exc)}") from exc
                if attempt == self.attempts:
                    raise LabelboxApiError(
                        f"Labelbox {what} failed after {attempt} attempts: {_describe(exc)}"
                    ) from exc
                delay = min(self.backoff_seconds * 2 ** (attempt - 1), 30.0) * random.uniform(0.8, 1.2)
                log.warning("Labelbox %s: %s; retrying in %.1fs (attempt %d of %d)",
                            what, _describe(exc), delay, attempt, self.attempts)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _model_run(self, model_run_id: str) -> Any:
        from lbox.exceptions import ResourceNotFoundError

        try:
            return self._call(f"lookup of model run {model_run_id}", lambda: self.client.get_model_run(model_run_id))
        except ResourceNotFoundError:
            raise ModelRunNotFound(model_run_id) from None

    # -- the port --------------------------------------------------------------------
    def _get(self, kind: str, uid: str, fetch: Callable[[], T], hint: str = "") -> T:
        from lbox.exceptions import ResourceNotFoundError

        try:
            return self._call(f"lookup of {kind} {uid}", fetch)
        except ResourceNotFoundError:
            raise LabelboxApiError(f"Labelbox {kind} {uid!r} not found{hint}") from None

    def export_rows(self, model_run_id: str) -> Iterator[dict[str, Any]]:
        """Export v2 rows, streamed one at a time (the SDK buffers the export files on disk)."""
        yield from self._export(self._model_run(model_run_id), model_run_id)

    def _export(self, model_run: Any, model_run_id: str) -> Iterator[dict[str, Any]]:
        yield from self._run_export(
            f"export of model run {model_run_id}",
            lambda: model_run.export(f"lbtrain-{model_run_id}", params=dict(EXPORT_PARAMS)))

    def _run_export(self, what: str, start: Callable[[], Any]) -> Iterator[dict[str, Any]]:
        """Start an Export v2 task (`start()`), wait for it, then stream its rows."""
        task = self._call(what, start)
        deadline = time.monotonic() + self.export_timeout_seconds
        self._call(what, lambda: task.wait_till_done(timeout_seconds=max(1, int(deadline - time.monotonic()))))
        if task.status == "IN_PROGRESS":
            raise LabelboxApiError(f"Labelbox {what} (task {task.uid}) did not finish within "
                                   f"{self.export_timeout_seconds:.0f}s")
        if task.status != "COMPLETE":
            raise LabelboxApiError(f"Labelbox {what} (task {task.uid}) ended {task.status}")
        if self._call(what, task.has_errors):
            raise LabelboxApiError(f"Labelbox {what} (task {task.uid}) reported errors: "
                                   + "; ".join(self._export_errors(task, what)))
        if not self._call(what, task.has_result):  # an empty model run has no result stream at all
            return
        yield from self._stream(task, what)

    def _export_errors(self, task: Any, what: str) -> list[str]:
        from labelbox.schema.export_task import StreamType

        samples: list[str] = []
        count = 0
        for error in self._stream(task, what, StreamType.ERRORS):  # read to the end: the SDK then removes its buffer
            count += 1
            if len(samples) < MAX_SAMPLES:
                samples.append(json.dumps(error, ensure_ascii=False)[:300])
        return [f"{count} error(s)", *samples]

    def _stream(self, task: Any, what: str, stream_type: Any = None) -> Iterator[dict[str, Any]]:
        # The SDK fetches every export file (to a temporary file) before the first row comes
        # out, so a failed fetch happens before anything was yielded: the stream is reopened.
        def first() -> tuple[Iterator[Any], Any]:
            stream = iter(task.get_buffered_stream(*([stream_type] if stream_type else [])))
            return stream, next(stream, None)

        stream, out = self._call(what, first)
        while out is not None:
            yield out.json
            out = next(stream, None)

    def update_status(self, model_run_id: str, status: str, metadata: dict[str, str] | None = None,
                      error_message: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown Labelbox status {status!r}")
        model_run = self._model_run(model_run_id)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()} or None
        message = clip_error(error_message) if error_message else None
        self._call(f"status {status} for model run {model_run_id}",
                   lambda: model_run.update_status(status, metadata=meta, error_message=message))

    def upload_predictions(self, model_run_id: str, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            log.info("no prediction rows to upload to model run %s", model_run_id)
            return
        model_run = self._model_run(model_run_id)
        batches = list(self.batches(rows))
        names = [name if i == 0 else f"{name}-p{i + 1}" for i in range(len(batches))]
        failed, samples = 0, []
        for batch_name, batch in zip(names, batches, strict=True):
            errors = self._import(model_run, model_run_id, batch_name, batch)
            failed += len(errors)
            samples.extend(errors[: MAX_SAMPLES - len(samples)])
        if failed:
            raise PredictionUploadError(model_run_id, failed, len(rows), samples, names)
        log.info("uploaded %d prediction rows to model run %s in %d import(s)", len(rows), model_run_id,
                 len(batches))

    def batches(self, rows: list[dict[str, Any]],
                key: Callable[[dict[str, Any]], Any] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Consecutive slices of at most `batch_rows` rows and about `batch_bytes` bytes of NDJSON.

        With `key`, a slice is only cut between rows of different keys (one data row's pre-labels
        stay in one import), so a slice may then pass the limits by one key's rows."""
        batch: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            n = len(json.dumps(row, ensure_ascii=False).encode()) + 1
            if batch and (len(batch) >= self.batch_rows or size + n > self.batch_bytes) and (
                    key is None or key(row) != key(batch[-1])):
                yield batch
                batch, size = [], 0
            batch.append(row)
            size += n
        if batch:
            yield batch

    def _import(self, model_run: Any, model_run_id: str, name: str, batch: list[dict[str, Any]]) -> list[str]:
        """One MEA prediction import, waited for; returns the rejected rows' messages."""
        what = f"prediction upload {name!r} ({len(batch)} rows) to model run {model_run_id}"
        job = self._call(what, lambda: model_run.add_predictions(name, batch))
        return self._finish_import(job, what, model_run_id, name, len(batch))

    def _finish_import(self, job: Any, what: str, target: str, name: str, rows: int,
                       kind: str = "model run") -> list[str]:
        """Wait for an annotation import (MEA or MAL) to end; the rejected rows' messages."""
        deadline = time.monotonic() + self.import_timeout_seconds
        # Not job.wait_till_done(): it has no deadline, and wraps refresh() in a 120 s retry of its own.
        polls = 0
        while job.state.value == "RUNNING":
            if time.monotonic() > deadline:
                raise LabelboxApiError(f"Labelbox {what} still running after {self.import_timeout_seconds:.0f}s")
            self._sleep(min(self.import_poll_seconds, 0.5 * 2**polls))  # small imports finish in seconds
            polls += 1
            self._call(what, job.refresh)
        if job.state.value == "FAILED":
            raise PredictionUploadError(target, rows, rows, [f"import {name} FAILED"], [name], kind=kind)
        rejected = self._call(what, lambda: self._fetch_ndjson(job.error_file_url)) if job.error_file_url else []
        return [_row_error(r) for r in rejected]

    def _fetch_ndjson(self, url: str) -> list[dict[str, Any]]:
        import requests

        response = requests.get(url, timeout=self.http_timeout_seconds)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.split("\n") if line.strip()]

    # -- closing the labeling loop: pre-labels and queue priorities ----------------------
    def unlabeled_rows(self, project_id: str) -> Iterator[dict[str, Any]]:
        """The project's Export v2 rows still to label, streamed, without their `projects` key.

        Labelbox filters to the workflow's "To Label" step (`workflow_status: ToLabel`) and the
        rows are checked here too: one with any label in `projects.<id>.labels` is left out."""
        project = self._get("project", project_id, lambda: self.client.get_project(project_id))
        rows = self._run_export(f"export of the unlabeled rows of project {project_id}", lambda: project.export(
            f"lbtrain-unlabeled-{project_id}", filters=dict(UNLABELED_EXPORT_FILTERS),
            params=dict(UNLABELED_EXPORT_PARAMS)))
        for row in rows:
            if not ((row.get("projects") or {}).get(project_id) or {}).get("labels"):
                yield {k: v for k, v in row.items() if k != "projects"}

    def import_prelabels(self, project_id: str, name: str, annotations: list[dict[str, Any]]) -> None:
        """MAL imports named `name` (then `<name>-p2`, … per batch, a data row's rows never split);
        an import that exists by name already is waited for and checked, never made again."""
        if not annotations:
            log.info("no pre-label rows to import to project %s", project_id)
            return
        self._get("project", project_id, lambda: self.client.get_project(project_id))
        batches = list(self.batches(annotations, key=_data_row_key))
        names = [name if i == 0 else f"{name}-p{i + 1}" for i in range(len(batches))]
        failed, samples = 0, []
        for batch_name, batch in zip(names, batches, strict=True):
            errors = self._mal_import(project_id, batch_name, batch)
            failed += len(errors)
            samples.extend(errors[: MAX_SAMPLES - len(samples)])
        if failed:
            raise PredictionUploadError(project_id, failed, len(annotations), samples, names, kind="project")
        log.info("imported %d pre-label rows to project %s in %d MAL import(s)", len(annotations), project_id,
                 len(batches))

    def _mal_import(self, project_id: str, name: str, batch: list[dict[str, Any]]) -> list[str]:
        from labelbox import MALPredictionImport
        from lbox.exceptions import ResourceNotFoundError

        what = f"pre-label import {name!r} ({len(batch)} rows) to project {project_id}"

        def existing() -> Any:
            try:
                found = MALPredictionImport.from_name(self.client, project_id, name, as_json=True)
            except ResourceNotFoundError:
                return None
            return MALPredictionImport(self.client, found) if found else None

        made: list[Any] = []

        def find_or_create() -> Any:
            # Looked up before every try: a create whose answer was lost must not be made twice.
            job = existing()
            if job is not None:
                return job
            try:
                job = MALPredictionImport.create_from_objects(self.client, project_id, name, batch)
            except Exception:
                # The SDK retries a 5xx itself; when the first create went through, its retry is
                # refused (the name is taken): the import that exists is the one we made.
                job = existing()
                if job is None:
                    raise
                return job
            made.append(job)
            return job

        job = self._call(what, find_or_create)
        if not made:
            log.info("MAL import %r of project %s exists already (%s); not made again", name, project_id, job.uid)
        return self._finish_import(job, what, project_id, name, len(batch), kind="project")

    def set_priorities(self, project_id: str, priorities: list[tuple[str, int]]) -> None:
        """`project.update_data_row_labeling_priority(UniqueIds(ids), priority)` per band of
        `priority_bands(...)`, in calls of at most `priority_batch_rows` data rows."""
        from labelbox import UniqueIds

        latest: dict[str, int] = {}
        for data_row_id, priority in priorities:  # a data row given twice: the last one counts
            p = int(priority)
            if not INT32[0] <= p <= INT32[1]:
                raise ValueError(f"priority {p} of data row {data_row_id} is not a 32-bit integer")
            latest[str(data_row_id)] = p
        if not latest:
            return
        project = self._get("project", project_id, lambda: self.client.get_project(project_id))
        bands = priority_bands(latest.items(), self.priority_bands)
        calls = 0
        for priority, ids in bands:
            for start in range(0, len(ids), self.priority_batch_rows):
                chunk = ids[start: start + self.priority_batch_rows]
                self._call(f"priority {priority} for {len(chunk)} data rows of project {project_id}",
                           lambda c=chunk, p=priority: project.update_data_row_labeling_priority(UniqueIds(c), p))
                calls += 1
        log.info("set the labeling priority of %d data rows of project %s: %d band(s), %d call(s)", len(latest),
                 project_id, len(bands), calls)

    # -- retraining rules -------------------------------------------------------------
    def create_model_run(self, model_id: str, project_id: str, name: str) -> str:
        """Find or create the model run `name`, then make its labels and splits complete."""
        model = self._get("model", model_id, lambda: self.client.get_model(model_id),
                          " (the retraining rule's model_id must be a model this API key can see)")
        self._get("project", project_id, lambda: self.client.get_project(project_id))
        what = f"model run {name!r} of model {model_id}"
        created: list[Any] = []

        def find_or_create() -> Any:
            # Listed again before a retried create too: the first create may have gone through.
            found = next((r for r in model.model_runs() if r.name == name), None)
            if found is None:
                found = model.create_model_run(name)
                created.append(found)
            return found

        model_run = self._call(f"creation of {what}", find_or_create)
        mr = model_run.uid
        log.info("%s model run %s (%r) of model %s; adding the labels of project %s", "created" if created
                 else "found existing", mr, name, model_id, project_id)
        timeout = max(1, int(self.task_timeout_seconds))
        self._call(f"adding the labels of project {project_id} to model run {mr} (model {model_id})",
                   lambda: model_run.upsert_labels(project_id=project_id, timeout_seconds=timeout))
        todo: dict[str, list[str]] = defaultdict(list)
        rows = 0
        for row in self._export(model_run, mr):
            rows += 1
            data_row_id = row["data_row"]["id"]
            split = split_for(data_row_id)
            if _split_of(row, model_id, mr) != split:
                todo[split].append(data_row_id)
        for split, ids in sorted(todo.items()):
            for start in range(0, len(ids), self.split_batch_rows):
                batch = ids[start: start + self.split_batch_rows]
                self._call(f"assigning {len(batch)} data rows to {split} in model run {mr} (model {model_id})",
                           lambda b=batch, s=split: model_run.assign_data_rows_to_split(
                               data_row_ids=b, split=s, timeout_seconds=timeout))
        if rows == 0:
            log.warning("model run %s (%r) holds no data rows: project %s has no labels", mr, name, project_id)
        log.info("model run %s: %d data rows from project %s, %d split assignment(s) made", mr, rows, project_id,
                 sum(len(v) for v in todo.values()))
        return mr

    def register_webhook(self, project_id: str, url: str, secret: str, topics: list[str]) -> str:
        """Create the project's webhook for `url`, or update the existing one (Labelbox's update
        cannot change a secret: to rotate it, delete the webhook in Labelbox and register again)."""
        from labelbox import Webhook

        known = [t.value for t in Webhook.Topic]
        unknown = [t for t in topics if t not in known]
        if not topics or unknown:
            raise ValueError(f"webhook topics must be some of {', '.join(known)}; got {', '.join(topics) or 'none'}")
        if not secret:
            raise ValueError("the webhook secret is empty")
        if not _INLINE_SAFE.fullmatch(url):
            raise ValueError(f"webhook URL {url!r} must not contain quotes, backslashes, spaces or control characters")
        if not _INLINE_SAFE.fullmatch(secret):
            raise ValueError("the webhook secret must not contain quotes, backslashes, spaces or control characters")
        with _redacted(secret):
            try:
                return self._register_webhook(project_id, url, secret, topics)
            except LabelboxApiError as exc:
                raise LabelboxApiError(str(exc).replace(secret, "***")) from None

    def _register_webhook(self, project_id: str, url: str, secret: str, topics: list[str]) -> str:
        from labelbox import Webhook

        project = self._get("project", project_id, lambda: self.client.get_project(project_id))

        def existing() -> list[Any]:
            return [w for w in project.webhooks() if w.url == url]

        hooks = self._call(f"listing the webhooks of project {project_id}", existing)
        if hooks:
            hook = hooks[0]
            if len(hooks) > 1:
                log.warning("project %s has %d webhooks for %s; updating %s only", project_id, len(hooks), url,
                            hook.uid)
            status = None if hook.status == "ACTIVE" else "ACTIVE"
            self._call(f"update of webhook {hook.uid} of project {project_id}",
                       lambda: hook.update(topics=list(topics), status=status))
            log.info("updated webhook %s of project %s (%s; topics %s); its secret is unchanged", hook.uid,
                     project_id, url, ",".join(topics))
            return hook.uid

        def find_or_create() -> Any:
            found = existing()
            return found[0] if found else Webhook.create(self.client, list(topics), url, secret, project)

        hook = self._call(f"creation of the webhook of project {project_id}", find_or_create)
        log.info("created webhook %s of project %s (%s; topics %s)", hook.uid, project_id, url, ",".join(topics))
        return hook.uid


def priority_bands(priorities: Iterable[tuple[str, int]],
                   max_bands: int = PRIORITY_BANDS) -> list[tuple[int, list[str]]]:
    """`(priority, data row ids)` bands, lowest priority first, at most `max_bands` of them.

    Labelbox sets one priority per bulk call (`update_data_row_labeling_priority`), so every
    distinct priority costs a call (a task, waited for). Up to `max_bands` distinct priorities
    each keep their own band. Beyond that, the distinct priorities (in order) are cut into
    log-spaced bands: the first ones stay alone, later bands grow geometrically (edge j of K at
    about D**(j/K) of D distinct values), and each band takes its lowest priority. Rows never
    change order across bands, equal priorities always share one, and the top of the queue, the
    rows labeled next, keeps its exact order; only far down the queue do rows share a number."""
    by_value: dict[int, list[str]] = defaultdict(list)
    for data_row_id, priority in priorities:
        by_value[int(priority)].append(data_row_id)
    values = sorted(by_value)
    d, k = len(values), max(1, max_bands)
    if d <= k:
        return [(v, by_value[v]) for v in values]
    edges = sorted({max(j, round(d ** (j / k)) - 1) for j in range(k)} | {d})
    return [(values[lo], [r for v in values[lo:hi] for r in by_value[v]]) for lo, hi in itertools.pairwise(edges)]


def _data_row_key(row: dict[str, Any]) -> Any:
    data_row = row.get("dataRow") or {}
    return data_row.get("id") or data_row.get("globalKey")


def _split_of(row: dict[str, Any], model_id: str, model_run_id: str) -> str:
    """The row's split in this model run, upper case (TRAINING…); "" when unassigned."""
    run = (((row.get("experiments") or {}).get(model_id) or {}).get("runs") or {}).get(model_run_id) or {}
    split = str(run.get("split") or "").upper()
    return "" if split == "UNASSIGNED" else split


class _Redact(logging.Filter):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "***"), ()
        return True


@contextlib.contextmanager
def _redacted(secret: str) -> Iterator[None]:
    """Redact `secret` from the records of SECRET_LOGGERS while the block runs."""
    redact = _Redact(secret)
    loggers = [logging.getLogger(name) for name in SECRET_LOGGERS]
    for logger in loggers:
        logger.addFilter(redact)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(redact)


def _row_error(status: dict[str, Any]) -> str:
    """`{"uuid", "dataRow": {"id"}, "status": "FAILURE", "errors": [{"name", "message"}]}` → one line."""
    data_row = status.get("dataRow") or {}
    where = data_row.get("id") or data_row.get("globalKey") or status.get("uuid") or "?"
    messages = [str(e.get("message") or e.get("name") or e) for e in status.get("errors") or [] if isinstance(e, dict)]
    return f"data row {where}: {' / '.join(messages) or 'rejected'}"
