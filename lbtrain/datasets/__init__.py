"""Reference datasets as file-backed Labelbox model runs: `lbtrain datasets build <model_type>`.

Each builder module writes `{out_dir}/model_runs/{model_run_id}/export.ndjson` (Export v2 rows with
training/validation/test splits) from public data that installs offline (datasets.md) and exposes
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


__all__ = ["MODULES", "NoBuilder", "available", "build"]
