"""The Labelbox port: what the pipeline needs from Labelbox, and the file-backed adapter (docs/architecture.md §9).

The domain only sees the `Labelbox` protocol; `LABELBOX_BACKEND=sdk` (labelbox_sdk.py)
implements the same methods with the labelbox SDK, imported only when that backend is chosen.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

STATUSES = ("EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL", "COMPLETE", "FAILED")
MAX_ERROR_MESSAGE = 255
# Ids become path components: no separators, and never "." or "..".
_SAFE_NAME = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9._-]{1,200}")


class ModelRunNotFound(LookupError):
    def __str__(self) -> str:
        return f"model run {self.args[0]!r} not found in Labelbox"


class PredictionUploadError(RuntimeError):
    """Labelbox rejected some prediction/metric rows (or a whole import): the run must not look clean.

    Raised after every batch was tried, so the accepted rows stay uploaded; `failed`/`total`
    count rows, `samples` holds the first few error messages."""

    def __init__(self, model_run_id: str, failed: int, total: int, samples: list[str], uploads: list[str],
                 *, kind: str = "model run"):
        # `kind`: what `model_run_id` names; "project" for pre-label (MAL) imports.
        self.model_run_id, self.failed, self.total = model_run_id, failed, total
        self.samples, self.uploads, self.kind = samples, uploads, kind
        first = "; ".join(samples[:3])
        super().__init__(
            f"Labelbox rejected {failed} of {total} prediction rows for {kind} {model_run_id!r} "
            f"(uploads {', '.join(uploads)})" + (f": {first}" if first else "")
        )


class Labelbox(Protocol):
    def export_rows(self, model_run_id: str) -> Iterator[dict[str, Any]]:
        """Export v2 rows of the model run (with model_run_details and media_attributes)."""

    def update_status(self, model_run_id: str, status: str, metadata: dict[str, str] | None = None,
                      error_message: str | None = None) -> None:
        """Set the model run's training status as Labelbox shows it."""

    def upload_predictions(self, model_run_id: str, name: str, rows: list[dict[str, Any]]) -> None:
        """Add prediction and metric rows to the model run."""

    def create_model_run(self, model_id: str, project_id: str, name: str) -> str:
        """A model run named `name` under the model, holding the project's labeled data rows with
        their splits; the existing one if a model run of that name exists (idempotent). Its id."""

    def register_webhook(self, project_id: str, url: str, secret: str, topics: list[str]) -> str:
        """Register (or update, by URL) the project's label webhook; its id."""

    # -- closing the labeling loop (the prelabel step, docs/architecture.md §4) ---------------------
    def unlabeled_rows(self, project_id: str) -> Iterator[dict[str, Any]]:
        """Export v2 *project* rows (data_row, media_attributes) of the project's data rows that have
        no label yet, streamed."""

    def import_prelabels(self, project_id: str, name: str, annotations: list[dict[str, Any]]) -> None:
        """Model-assisted labeling import of annotation-import rows (each with `dataRow.id`) into the
        project, named `name`; an import of that name that exists already is not made again
        (idempotent on retry). Raises PredictionUploadError naming the rejected rows."""

    def set_priorities(self, project_id: str, priorities: list[tuple[str, int]]) -> None:
        """Labeling-queue priority per data row (a lower number is labeled first), in bulk.

        The order is what counts: a row never goes ahead of a row given a lower number. The SDK
        adapter keeps the numbers of the first rows exactly but gives rows far down the queue
        shared numbers (at most `priority_bands` distinct values, labelbox_sdk.priority_bands)."""


# Splits of data rows in model runs created by retraining rules: a stable hash of the data row id, so
# a data row stays in the same split across model runs and test rows never become training rows.
SPLIT_SHARES = (("TRAINING", 0.8), ("VALIDATION", 0.1), ("TEST", 0.1))


def split_for(data_row_id: str) -> str:
    x = int(hashlib.sha256(data_row_id.encode()).hexdigest()[:8], 16) / 0x100000000
    total = 0.0
    for split, share in SPLIT_SHARES:
        total += share
        if x < total:
            return split
    return SPLIT_SHARES[-1][0]


def model_run_id_for(model_id: str, name: str) -> str:
    """Deterministic id of the file-backed model run `name` of `model_id`."""
    return "mr" + hashlib.sha256(f"{model_id}\n{name}".encode()).hexdigest()[:22]


_URL = re.compile(r"((?:https?|gs)://\S+)")
_MIN_PROSE = 24  # characters of prose kept next to the links
_TAIL = 16  # characters kept before a link when prose in front of it is cut ("… logs: https://…")


def clip_error(message: object, limit: int = MAX_ERROR_MESSAGE) -> str:
    """One line of at most `limit` characters (Labelbox shows 255) keeping what helps most.

    Links (a log URL is the most useful thing in a failure message) survive whole, latest
    first, as long as they fit; the prose around them is cut in its middle: the start of each
    cut piece stays (what failed), and so do the last words before a link. Without links the
    end of the message is cut."""
    text = " ".join(str(message).split())
    if len(text) <= limit:
        return text
    pieces = _URL.split(text)  # prose, url, prose, url, ..., prose
    keep, room = set(), limit - _MIN_PROSE
    for i in range(len(pieces) - 2, 0, -2):
        if len(pieces[i]) <= room:
            keep.add(i)
            room -= len(pieces[i])
    segments: list[tuple[str, bool]] = []  # (text, is a kept link); dropped links become prose
    for i, piece in enumerate(pieces):
        if i not in keep and segments and not segments[-1][1]:
            segments[-1] = (segments[-1][0] + piece, False)
        else:
            segments.append((piece, i in keep))
    # Water-filling: every prose piece longer than `width` is cut to `width` characters (with
    # its "…"), the widest `width` that fits, so no piece is wiped out while another stays long.
    fixed = sum(len(t) for t, link in segments if link)
    prose = [len(t) for t, link in segments if not link]
    width = min(max(prose, default=0), limit)
    while width > 2 and fixed + sum(min(n, width) for n in prose) > limit:
        width -= 1
    for k, (piece, link) in enumerate(segments):
        if not link and len(piece) > width > 2:
            kept = width - 1
            tail = min(_TAIL, kept // 2) if k + 1 < len(segments) else 0
            segments[k] = (piece[: kept - tail] + "…" + (piece[len(piece) - tail:] if tail else ""), False)
    out = "".join(t for t, _ in segments)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _read_ndjson(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from None


def _write_ndjson(target: Path, rows: list[dict[str, Any]]) -> None:
    """All rows or none: written beside `target`, then renamed over it."""
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, target)


def _check_id(value: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a safe identifier")
    return value


class FileLabelbox:
    """`$LABELBOX_DIR/model_runs/<id>/{export.ndjson,status.jsonl,predictions/<name>.ndjson}` and
    `$LABELBOX_DIR/projects/<id>/{export.ndjson,webhooks.json,prelabels/<name>.ndjson,priorities.json}`."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def model_run_dir(self, model_run_id: str) -> Path:
        return self.root / "model_runs" / _check_id(model_run_id, "model run id")

    def _existing_dir(self, model_run_id: str) -> Path:
        d = self.model_run_dir(model_run_id)
        if not d.is_dir():
            raise ModelRunNotFound(model_run_id)
        return d

    def export_rows(self, model_run_id: str) -> Iterator[dict[str, Any]]:
        path = self._existing_dir(model_run_id) / "export.ndjson"
        if not path.exists():
            raise ModelRunNotFound(model_run_id)
        yield from _read_ndjson(path)

    def statuses(self, model_run_id: str) -> list[dict[str, Any]]:
        path = self.model_run_dir(model_run_id) / "status.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def update_status(self, model_run_id: str, status: str, metadata: dict[str, str] | None = None,
                      error_message: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown Labelbox status {status!r}")
        d = self._existing_dir(model_run_id)
        entry = {
            "status": status,
            "metadata": {str(k): str(v) for k, v in (metadata or {}).items()},
            "error_message": clip_error(error_message) if error_message else None,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        prior = self.statuses(model_run_id)
        # Redelivered handlers report the same status again; like the real API, setting it
        # twice leaves one visible state, so consecutive repeats are not appended.
        if prior and {k: prior[-1].get(k) for k in ("status", "metadata", "error_message")} == {
            k: entry[k] for k in ("status", "metadata", "error_message")
        }:
            return
        with (d / "status.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def upload_predictions(self, model_run_id: str, name: str, rows: list[dict[str, Any]]) -> None:
        d = self._existing_dir(model_run_id) / "predictions"
        d.mkdir(exist_ok=True)
        _write_ndjson(d / f"{_check_id(name, 'prediction upload name')}.ndjson", rows)

    # -- projects: what label webhooks and retraining rules act on ------------------------------
    def project_dir(self, project_id: str) -> Path:
        return self.root / "projects" / _check_id(project_id, "project id")

    def create_model_run(self, model_id: str, project_id: str, name: str) -> str:
        """`projects/<id>/export.ndjson` (Export v2 project rows) → a new model run's export."""
        source = self.project_dir(project_id) / "export.ndjson"
        if not source.exists():
            raise ValueError(f"project {project_id!r} not found in Labelbox (no {source})")
        model_run_id = model_run_id_for(_check_id(model_id, "model id"), name)
        target_dir = self.model_run_dir(model_run_id)
        if (target_dir / "export.ndjson").exists():
            return model_run_id
        target_dir.mkdir(parents=True, exist_ok=True)
        tmp = target_dir / ".export.ndjson.tmp"
        with source.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as out:
            for line in src:
                if not line.strip():
                    continue
                row = json.loads(line)
                labels = ((row.pop("projects", None) or {}).get(project_id) or {}).get("labels") or []
                row["experiments"] = {model_id: {"name": model_id, "runs": {model_run_id: {
                    "name": name, "split": split_for(row["data_row"]["id"]), "labels": labels, "predictions": []}}}}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        (target_dir / "meta.json").write_text(json.dumps(
            {"name": name, "model_id": model_id, "project_id": project_id}, indent=1), encoding="utf-8")
        os.replace(tmp, target_dir / "export.ndjson")
        return model_run_id

    def unlabeled_rows(self, project_id: str) -> Iterator[dict[str, Any]]:
        """`projects/<id>/export.ndjson` rows whose `projects.<id>.labels` is empty."""
        source = self.project_dir(project_id) / "export.ndjson"
        if not source.exists():
            raise ValueError(f"project {project_id!r} not found in Labelbox (no {source})")
        for row in _read_ndjson(source):
            if not ((row.get("projects") or {}).get(project_id) or {}).get("labels"):
                yield {k: v for k, v in row.items() if k != "projects"}

    def prelabels(self, project_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every MAL import of the project by name (what the demo and the tests read back)."""
        d = self.project_dir(project_id) / "prelabels"
        if not d.is_dir():
            return {}
        return {p.stem: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
                for p in sorted(d.glob("*.ndjson"))}

    def import_prelabels(self, project_id: str, name: str, annotations: list[dict[str, Any]]) -> None:
        d = self.project_dir(project_id)
        if not d.is_dir():
            raise ValueError(f"project {project_id!r} not found in Labelbox (no {d})")
        (d / "prelabels").mkdir(exist_ok=True)
        target = d / "prelabels" / f"{_check_id(name, 'import name')}.ndjson"
        if not target.exists():  # else made on an earlier attempt: Labelbox refuses a second import of the name
            _write_ndjson(target, annotations)

    def priorities(self, project_id: str) -> dict[str, int]:
        path = self.project_dir(project_id) / "priorities.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def set_priorities(self, project_id: str, priorities: list[tuple[str, int]]) -> None:
        d = self.project_dir(project_id)
        if not d.is_dir():
            raise ValueError(f"project {project_id!r} not found in Labelbox (no {d})")
        merged = {**self.priorities(project_id), **{str(r): int(p) for r, p in priorities}}
        tmp = d / ".priorities.json.tmp"
        tmp.write_text(json.dumps(merged, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, d / "priorities.json")

    def register_webhook(self, project_id: str, url: str, secret: str, topics: list[str]) -> str:
        d = self.project_dir(project_id)
        d.mkdir(parents=True, exist_ok=True)
        path = d / "webhooks.json"
        hooks = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
        hook_id = "wh" + hashlib.sha256(f"{project_id}\n{url}".encode()).hexdigest()[:22]
        # Like Labelbox, the secret is kept for signing but never shown again: only its digest here.
        entry = {"id": hook_id, "url": url, "topics": list(topics),
                 "secret_sha256": hashlib.sha256(secret.encode()).hexdigest()}
        hooks = [h for h in hooks if h.get("url") != url] + [entry]
        path.write_text(json.dumps(hooks, indent=1), encoding="utf-8")
        return hook_id


def from_config(config: Any) -> Labelbox:
    if config.labelbox_backend == "file":
        return FileLabelbox(config.labelbox_dir)
    if config.labelbox_backend == "sdk":
        from lbtrain.adapters.labelbox_sdk import SdkLabelbox  # imports the labelbox SDK itself lazily

        return SdkLabelbox(config.labelbox_api_key, endpoint=config.labelbox_endpoint)
    raise ValueError(f"LABELBOX_BACKEND={config.labelbox_backend!r} is not supported; use file or sdk")
