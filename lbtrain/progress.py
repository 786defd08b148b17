"""Training progress: what a running job reports and the REST API, dashboard and CLI show.

Firestore is written once per stage, never per epoch (writes are billed, docs/architecture.md §6), so
a job reports progress as one small JSON file, `progress.json`, in its step's outputs dir, the
directory every job already writes (`storage.run_dir`, a local path or gs://). The file is rewritten
whole (GCS objects cannot be appended to) at most every `INTERVAL` seconds, and once more when the
stage ends. Readers find it at the same deterministic place while the step is RUNNING.

Format (version 1)::

    {"version": 1, "stage": "train", "unit": "epoch", "done": 3, "total": 10,
     "loss": 0.41, "metric": "accuracy", "value": 0.93, "note": "",
     "elapsed_seconds": 42.0, "eta_seconds": 80.0, "updated_at": "2026-12-03T08:00:00Z",
     "history": [{"done": 1, "loss": 0.8, "value": 0.7}, ...]}

`unit` is what the trainer counts (epochs of a torch trainer; fits of a C or c1/c2 grid, the refit
included, for the text trainers), `done` of `total` are finished. `loss` is the training loss of the
last one (absent where the trainer has none), `metric`/`value` the validation metric. `eta_seconds`
is the remaining units at the mean pace since the first report of this unit (null until there is a
pace). `history` holds the last `HISTORY_LIMIT` reports, for the chart.

Trainers report through the `progress` callback every task already gets: `report(progress, …)`
adds an `iteration` field, which `jobs.context.StageContext.progress` hands to a `Writer`. Standard
library only (plus lbtrain.storage): the services import this to read.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from lbtrain import storage

FILE = "progress.json"
VERSION = 1
INTERVAL = 5.0  # seconds between two writes (a GCS object may be rewritten about once a second)
HISTORY_LIMIT = 500
READ_TIMEOUT = 10.0  # seconds: a page or a poll waits no longer for the file
_TEXT_LIMIT = 200

log = logging.getLogger("lbtrain.progress")


def report(progress: Callable[..., None], message: str, *, unit: str, done: int, total: int,
           loss: float | None = None, metric: str = "", value: float | None = None, note: str = "",
           extra: Mapping[str, Any] | None = None) -> None:
    """`done` of `total` iterations finished, through a task's `progress(message, **fields)` callback:
    logged as usual (with `extra` fields), and written to progress.json when the callback belongs to
    a job (StageContext); any other callback just sees one more field."""
    iteration = {"unit": unit, "done": int(done), "total": int(total), "loss": loss, "metric": metric,
                 "value": value, "note": note}
    progress(message, **dict(extra or {}), iteration=iteration)


class Counter:
    """Counts a known number of units one by one (the text trainers' grid fits): reports 0 of
    `total` on creation, so that the pace, and the ETA, start with the first unit."""

    def __init__(self, progress: Callable[..., None], unit: str, total: int, metric: str = ""):
        self.progress, self.unit, self.total, self.metric, self.done = progress, unit, total, metric, 0
        report(progress, f"{unit} 0/{total}", unit=unit, done=0, total=total, metric=metric)

    def step(self, message: str, *, loss: float | None = None, value: float | None = None, note: str = "",
             extra: Mapping[str, Any] | None = None) -> None:
        self.done += 1
        report(self.progress, message, unit=self.unit, done=self.done, total=max(self.total, self.done), loss=loss,
               metric=self.metric, value=value, note=note, extra=extra)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Writer:
    """Keeps a job's progress and rewrites `{outputs}/progress.json`, at most every `interval`
    seconds (the last report of a unit, done == total, is written at once); `flush()` writes what
    is left. A write that fails is logged and skipped: progress never fails a training."""

    def __init__(self, outputs_uri: str, stage: str, *, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], str] = _utc_now):
        self.uri = storage.join(outputs_uri, FILE)
        self.stage = stage
        self.interval = interval
        self._clock, self._wall = clock, wall
        self._state: dict[str, Any] = {}
        self._history: list[dict[str, Any]] = []
        self._first: tuple[float, int] | None = None  # (clock, done) of the first report of this unit
        self._last_write: float | None = None
        self._dirty = False
        self._failed = False
        self.writes = 0

    def update(self, *, unit: str, done: int, total: int, loss: float | None = None, metric: str = "",
               value: float | None = None, note: str = "") -> None:
        now = self._clock()
        if self._first is None or unit != self._state.get("unit") or done < self._state.get("done", 0):
            self._first, self._history = (now, done), []  # a new count: its pace starts here
        t0, d0 = self._first
        eta = (now - t0) / (done - d0) * max(0, total - done) if done > d0 else None
        self._state = {
            "version": VERSION, "stage": self.stage, "unit": str(unit)[:_TEXT_LIMIT], "done": int(done),
            "total": int(total), "loss": _number(loss), "metric": str(metric)[:_TEXT_LIMIT],
            "value": _number(value), "note": str(note)[:_TEXT_LIMIT],
            "elapsed_seconds": round(now - t0, 1), "eta_seconds": None if eta is None else round(eta, 1),
            "updated_at": self._wall(),
        }
        if done > 0:
            point = {"done": int(done), "loss": _number(loss), "value": _number(value)}
            if self._history and self._history[-1]["done"] == point["done"]:  # the same unit again: merge
                last = self._history[-1]
                self._history[-1] = {k: last[k] if v is None else v for k, v in point.items()}
            else:
                self._history.append(point)
            del self._history[:-HISTORY_LIMIT]
        self._dirty = True
        if self._last_write is None or now - self._last_write >= self.interval or done >= total:
            self.flush()

    def snapshot(self) -> dict[str, Any]:
        return {**self._state, "history": list(self._history)}

    def flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self._last_write = self._clock()
        try:
            storage.write_json(self.uri, self.snapshot())
            self.writes += 1
        except Exception as exc:  # noqa: BLE001 - progress is best effort; the training goes on
            if not self._failed:
                log.warning("cannot write %s (progress not shown): %s: %s", self.uri, type(exc).__name__, exc)
            self._failed = True


# -- reading -------------------------------------------------------------------------------------


def parse(data: Any) -> dict[str, Any] | None:
    """A progress document, checked and normalised (it is rendered into pages); None if it is not one."""
    if not isinstance(data, Mapping) or data.get("version") != VERSION:
        return None
    done, total = data.get("done"), data.get("total")
    if not isinstance(done, int) or not isinstance(total, int) or isinstance(done, bool) or total < 0:
        return None
    history = []
    for point in data.get("history") or []:
        if isinstance(point, Mapping) and isinstance(point.get("done"), int):
            history.append({"done": point["done"], "loss": _number(point.get("loss")),
                            "value": _number(point.get("value"))})
    return {
        "stage": str(data.get("stage") or "")[:_TEXT_LIMIT], "unit": str(data.get("unit") or "step")[:_TEXT_LIMIT],
        "done": done, "total": total, "loss": _number(data.get("loss")),
        "metric": str(data.get("metric") or "")[:_TEXT_LIMIT], "value": _number(data.get("value")),
        "note": str(data.get("note") or "")[:_TEXT_LIMIT], "elapsed_seconds": _number(data.get("elapsed_seconds")),
        "eta_seconds": _number(data.get("eta_seconds")), "updated_at": str(data.get("updated_at") or "")[:40],
        "history": history[-HISTORY_LIMIT:],
    }


def read(outputs_uri: str) -> dict[str, Any] | None:
    """The progress in a step's outputs dir; None when there is none (yet) or it cannot be read."""
    try:
        return parse(json.loads(storage.read_bytes(storage.join(outputs_uri, FILE), timeout=READ_TIMEOUT)))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a page or a poll must not fail over progress
        log.info("progress at %s unreadable: %s: %s", outputs_uri, type(exc).__name__, exc)
        return None


def of_running_step(artifact_root: str, run: Mapping[str, Any],
                    steps: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The progress of the run's RUNNING step (read where its job writes), with its stage and attempt."""
    for step in steps:
        if step.get("state") == "RUNNING" and step.get("stage"):
            attempt = int(step.get("attempt") or 1)
            found = read(storage.run_dir(artifact_root, str(run["run_id"]), str(step["stage"]), attempt))
            if found is not None:
                return {**found, "stage": str(step["stage"]), "attempt": attempt}
    return None


def fmt_eta(seconds: float | None) -> str:
    """`45s`, `1m20s`, `2h05m`; empty when unknown."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def describe(p: Mapping[str, Any]) -> str:
    """One line: `train: epoch 3/10 loss 0.41 val accuracy 0.93 ETA 1m20s`."""
    parts = [f"{p.get('stage') or 'step'}: {p.get('unit')} {p.get('done')}/{p.get('total')}"]
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4g}")
    if p.get("value") is not None:
        parts.append(f"val {p.get('metric') or 'score'} {p['value']:.4g}")
    if p.get("eta_seconds") is not None and p.get("done", 0) < p.get("total", 0):
        parts.append(f"ETA {fmt_eta(p['eta_seconds'])}")
    if p.get("note"):
        parts.append(f"({p['note']})")
    return " ".join(parts)
