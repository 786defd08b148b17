"""The `Labelbox` port on the real labelbox SDK 7.x (`LABELBOX_BACKEND=sdk`, labelbox-formats.md).

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

The API key goes only into the SDK client (an Authorization header); it is never logged.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from lbtrain.adapters.labelbox import STATUSES, ModelRunNotFound, PredictionUploadError, clip_error

log = logging.getLogger("lbtrain.labelbox")
T = TypeVar("T")

BATCH_ROWS = 5000
BATCH_BYTES = 16 << 20
EXPORT_PARAMS = {"model_run_details": True, "media_attributes": True, "predictions": False}
MAX_SAMPLES = 5


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
                 http_timeout_seconds: float = 60.0, sleep: Callable[[float], None] = time.sleep):
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
    def export_rows(self, model_run_id: str) -> Iterator[dict[str, Any]]:
        """Export v2 rows, streamed one at a time (the SDK buffers the export files on disk)."""
        model_run = self._model_run(model_run_id)
        what = f"export of model run {model_run_id}"
        task = self._call(what, lambda: model_run.export(f"lbtrain-{model_run_id}", params=dict(EXPORT_PARAMS)))
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

    def batches(self, rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        """Consecutive slices of at most `batch_rows` rows and about `batch_bytes` bytes of NDJSON."""
        batch: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            n = len(json.dumps(row, ensure_ascii=False).encode()) + 1
            if batch and (len(batch) >= self.batch_rows or size + n > self.batch_bytes):
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
            raise PredictionUploadError(model_run_id, len(batch), len(batch), [f"import {name} FAILED"], [name])
        rejected = self._call(what, lambda: self._fetch_ndjson(job.error_file_url)) if job.error_file_url else []
        return [_row_error(r) for r in rejected]

    def _fetch_ndjson(self, url: str) -> list[dict[str, Any]]:
        import requests

        response = requests.get(url, timeout=self.http_timeout_seconds)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.split("\n") if line.strip()]


def _row_error(status: dict[str, Any]) -> str:
    """`{"uuid", "dataRow": {"id"}, "status": "FAILURE", "errors": [{"name", "message"}]}` → one line."""
    data_row = status.get("dataRow") or {}
    where = data_row.get("id") or data_row.get("globalKey") or status.get("uuid") or "?"
    messages = [str(e.get("message") or e.get("name") or e) for e in status.get("errors") or [] if isinstance(e, dict)]
    return f"data row {where}: {' / '.join(messages) or 'rejected'}"
