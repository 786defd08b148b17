"""Reference datasets as file-backed Labelbox model runs: `lbtrain datasets build <model_type>`.

Each builder module writes `{out_dir}/model_runs/{model_run_id}/export.ndjson` (Export v2 rows with
training/validation/test splits) from public data that installs offline (docs/architecture.md §12) and exposes
`available() -> {model_type: [dataset names, default first]}` and `build(model_type, …) -> summary`.
Modules are imported on use so `lbtrain` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from lbtrain.datasets.common import NoBuilder

# model type → builder module
MODULES: dict[str, str] = {
    "text_single_classification": "lbtrain.datasets.text_classes",
    "text_multi_classification": "lbtrain.datasets.wnut",
    "ner": "lbtrain.datasets.wnut",
    "bounding_box": "lbtrain.datasets.mnist_boxes",
    "image_single_classification": "lbtrain.datasets.mnist",
    "image_multi_classification": "lbtrain.datasets.mnist",
}


def _module(model_type: str) -> Any:
    if model_type not in MODULES:
        raise NoBuilder(f"no reference dataset builder for model type {model_type!r} "
                        f"(available: {', '.join(sorted(MODULES))})")
    return importlib.import_module(MODULES[model_type])


def available() -> dict[str, list[str]]:
    """Model type → dataset names (the first is the default)."""
    out: dict[str, list[str]] = {}
    for model_type in sorted(MODULES):
        out[model_type] = _module(model_type).available()[model_type]
    return out


def build(model_type: str, out_dir: str, model_run_id: str, **kwargs: Any) -> dict[str, Any]:
    """Write the model run; kwargs: limit, seed, model_id, dataset (see the builder module)."""
    return _module(model_type).build(model_type, out_dir, model_run_id, **kwargs)


def build_project(model_type: str, out_dir: str, project_id: str, **kwargs: Any) -> dict[str, Any]:
    """Write `{out_dir}/projects/{project_id}/export.ndjson`: the same rows as a Labelbox *project*
    export (labels under `projects`, no splits), what retraining rules create model runs from."""
    import json
    import os
    import shutil

    from lbtrain.adapters.labelbox import FileLabelbox

    lb = FileLabelbox(out_dir)
    target_dir = lb.project_dir(project_id)
    # Built as a scratch model run in the same directory so media URIs stay valid, then reshaped.
    scratch = f"project-source-{project_id}"[:200]
    summary = build(model_type, out_dir, scratch, **kwargs)
    source_dir = lb.model_run_dir(scratch)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        part = target_dir / ".export.ndjson.tmp"
        with (source_dir / "export.ndjson").open(encoding="utf-8") as src, part.open("w", encoding="utf-8") as out:
            for line in src:
                row = json.loads(line)
                labels = [lab for exp in (row.pop("experiments", None) or {}).values()
                          for run in (exp.get("runs") or {}).values() for lab in run.get("labels") or []]
                row["projects"] = {project_id: {"name": project_id, "labels": labels}}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(part, target_dir / "export.ndjson")
    finally:
        shutil.rmtree(source_dir, ignore_errors=True)
    # Splits are the model run's business (assigned when a rule creates one): report totals only.
    for key in ("model_run_id", "export", "per_split"):
        summary.pop(key, None)
    if isinstance(summary.get("per_class"), dict):
        summary["per_class"] = {c: sum(v.values()) if isinstance(v, dict) else v
                                for c, v in summary["per_class"].items()}
    return {**summary, "project_id": project_id, "path": str(target_dir / "export.ndjson")}


__all__ = ["MODULES", "NoBuilder", "available", "build", "build_project"]
