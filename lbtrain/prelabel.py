"""Whether a run ends with the prelabel step, and with which settings (docs/architecture.md §4.5).

The prelabel step predicts a project's unlabeled data rows with the run's deployed model, imports
the confident predictions as pre-labels (model-assisted labeling) and writes labeling-queue
priorities, most uncertain first (jobs/prelabel.py). It is on by default for a retraining rule's
runs (they come from a project); other runs ask for it with the run parameter `prelabel` or the
model type's `MODEL_OPTIONS` entry. Import-light: the ingress resolves this for every new run.

Settings (`params.prelabel`, or `MODEL_OPTIONS[type].prelabel`; `true` means the defaults):
  enabled         bool, default true where given
  project_id      the Labelbox project whose unlabeled rows are pre-labeled (a rule's own project)
  min_confidence  below it nothing is pre-labeled: a number, or {class: number, "*": default}
  random_share    share of random picks in the queue order, [0, 1]
  batch_size      annotation rows per MAL import (and rows predicted at a time)
  max_rows        unlabeled rows predicted at most (the rest keep their priority)
"""

from __future__ import annotations

import re
from typing import Any

PRELABEL = "prelabel"
DEFAULTS: dict[str, Any] = {"min_confidence": 0.6, "random_share": 0.1, "batch_size": 1000, "max_rows": 1_000_000}
KEYS = {"enabled", "project_id", *DEFAULTS}
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class PrelabelError(ValueError):
    """Bad prelabel settings: a request naming them is refused (400) and nothing is written."""


def _fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise PrelabelError(f"{what} must be a number within [0, 1], not {value!r}")
    return float(value)


def normalize(raw: Any, what: str = "params.prelabel") -> dict[str, Any]:
    """`true` / `false` / an object → a settings object with every key; raises PrelabelError."""
    if isinstance(raw, bool):
        return {**DEFAULTS, "enabled": raw}
    if not isinstance(raw, dict):
        raise PrelabelError(f"{what} must be true, false or an object, not {type(raw).__name__}")
    unknown = set(raw) - KEYS
    if unknown:
        raise PrelabelError(f"{what}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(KEYS))})")
    out = {**DEFAULTS, "enabled": raw.get("enabled", True), **{k: v for k, v in raw.items() if k != "enabled"}}
    if not isinstance(out["enabled"], bool):
        raise PrelabelError(f"{what}.enabled must be true or false")
    if "project_id" in out and (not isinstance(out["project_id"], str) or not _ID.fullmatch(out["project_id"])):
        raise PrelabelError(f"{what}.project_id {str(out['project_id'])[:80]!r} is not a valid id")
    conf = out["min_confidence"]
    if isinstance(conf, dict):
        if not conf or len(conf) > 10_000:
            raise PrelabelError(f"{what}.min_confidence must name 1 to 10,000 classes")
        out["min_confidence"] = {str(k)[:200]: _fraction(v, f"{what}.min_confidence[{str(k)[:40]!r}]")
                                 for k, v in conf.items()}
    else:
        out["min_confidence"] = _fraction(conf, f"{what}.min_confidence")
    out["random_share"] = _fraction(out["random_share"], f"{what}.random_share")
    for key, top in (("batch_size", 10_000), ("max_rows", 10_000_000)):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise PrelabelError(f"{what}.{key} must be an integer within [1, {top:,}], not {value!r}")
    return out


def resolve(params: dict[str, Any], trigger: dict[str, Any], options: Any = None) -> dict[str, Any] | None:
    """The run's prelabel settings, or None when the run has no prelabel step.

    `options` is the model type's MODEL_OPTIONS prelabel entry (None when not configured). A run
    parameter wins over MODEL_OPTIONS, which wins over the default (on for a rule's runs). Asked for
    explicitly without a project to work on: PrelabelError. Turned on by MODEL_OPTIONS alone for a run
    that names no project (a model run started by hand): no step, as there is nothing to pre-label."""
    rule_project = str(trigger.get("project_id") or "") if trigger.get("source") == "label_webhook" else ""
    explicit = "prelabel" in (params or {})
    if explicit:
        settings = normalize(params["prelabel"])
    elif options is not None:
        settings = normalize(options, "MODEL_OPTIONS prelabel")
    elif rule_project:
        settings = {**DEFAULTS, "enabled": True}
    else:
        return None
    if not settings["enabled"]:
        return None
    settings.setdefault("project_id", rule_project)
    if not settings["project_id"]:
        if explicit:
            raise PrelabelError("params.prelabel needs a project_id: the Labelbox project whose unlabeled "
                                "data rows are pre-labeled")
        return None
    return settings


def stages_for(stages: tuple[str, ...], settings: dict[str, Any] | None) -> tuple[str, ...]:
    return (*stages, PRELABEL) if settings else tuple(stages)


def with_settings(params: dict[str, Any], settings: dict[str, Any] | None) -> dict[str, Any]:
    """The run's params as stored: the resolved settings under `prelabel` (the job reads them there)."""
    out = {k: v for k, v in (params or {}).items() if k != "prelabel"}
    if settings:
        out["prelabel"] = settings
    return out
