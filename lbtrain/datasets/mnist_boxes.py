"""Bounding-box reference dataset (docs/architecture.md §12): 128 px canvases with 1–3 real MNIST digits, a
tight box around each digit, class = the digit. Built on `lbtrain.datasets.mnist.make_canvases`,
whose source digits are split 70/15/15 before any canvas is drawn, so the digits of the test
canvases come from MNIST images never pasted into a training (or validation) canvas.

`build("bounding_box", out_dir, model_run_id)` writes PNGs under `{out_dir}/media/{dataset}/` and
`{out_dir}/model_runs/{model_run_id}/export.ndjson` with `ImageBoundingBox` objects
(docs/architecture.md §11), `file://` row_data, media_attributes and deterministic ids (common.cuid).
`limit` is the number of canvases (default 2,000: enough for mAP@0.5 ≥ 0.9 within the 5-minute
training budget on two cores, see README). numpy/PIL are imported inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lbtrain.datasets.common import (
    DEFAULT_MODEL_ID,
    SPLIT_FRACTIONS,
    NoBuilder,
    cuid,
    export_v2_row,
    write_export,
)

MODEL_TYPE = "bounding_box"
DATASET = "mnist_boxes"
CANVAS_SIZE = 128
DEFAULT_CANVASES = 2000
SCALE = (1.0, 1.5)  # digit side 28–42 px before the tight crop
DESCRIPTION = "128 px canvases with 1–3 real MNIST digits each; a tight box around every digit, class = digit"


def available() -> dict[str, list[str]]:
    """Model type → dataset names (the first is the default)."""
    return {MODEL_TYPE: [DATASET]}


def split_sizes(n: int) -> dict[str, int]:
    """70/15/15 canvases, at least one per split once there are 3."""
    val, test = round(n * 0.15), round(n * 0.15)
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    return {"train": n - val - test, "validation": val, "test": test}


def _write_png(path: Path, array: Any) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return  # deterministic content: a rebuild keeps the file
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)


def export_row(
    key: str, png: Path, boxes: list[tuple[int, int, int, int, int]], split: str, model_id: str, model_run_id: str
) -> dict[str, Any]:
    """One Export v2 row with a rectangle per digit ((digit, x0, y0, x1, y1), x1/y1 exclusive)."""
    objects = [
        {
            "feature_id": cuid("feature", DATASET, key, k),
            "feature_schema_id": cuid("schema", DATASET, str(digit)),
            "name": str(digit),
            "value": str(digit),
            "annotation_kind": "ImageBoundingBox",
            "classifications": [],
            "bounding_box": {"top": float(y0), "left": float(x0), "height": float(y1 - y0), "width": float(x1 - x0)},
        }
        for k, (digit, x0, y0, x1, y1) in enumerate(boxes)
    ]
    return export_v2_row(dataset=DATASET, ident=key, key=key, row_data=png.resolve().as_uri(),
                         media_attributes={"height": CANVAS_SIZE, "width": CANVAS_SIZE, "mime_type": "image/png"},
                         model_id=model_id, model_run_id=model_run_id, split=split, objects=objects)


def build(
    model_type: str,
    out_dir: str,
    model_run_id: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    model_id: str = DEFAULT_MODEL_ID,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Write the canvases (PNG) and the file-backed model run; `limit` = number of canvases."""
    from lbtrain.datasets import mnist

    if model_type != MODEL_TYPE:
        raise NoBuilder(f"no MNIST box dataset for model type {model_type!r} (have: {MODEL_TYPE})")
    if (dataset or DATASET) != DATASET:
        raise NoBuilder(f"unknown dataset {dataset!r} for {MODEL_TYPE} (available: {DATASET})")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number, not {limit}")
    out = Path(out_dir).resolve()
    sizes = split_sizes(limit or DEFAULT_CANVASES)
    rows: list[dict[str, Any]] = []
    per_class = {str(d): {s: 0 for s, _ in SPLIT_FRACTIONS} for d in range(10)}
    for split, _ in SPLIT_FRACTIONS:
        canvases = mnist.make_canvases(sizes[split], CANVAS_SIZE, seed, split, scale=SCALE, split_seed=seed)
        for j, (image, boxes) in enumerate(canvases):
            key = f"{DATASET}-s{seed}-{split}-{j:05d}"
            png = out / "media" / DATASET / f"s{seed}-{split}-{j:05d}.png"
            _write_png(png, image)
            rows.append(export_row(key, png, boxes, split, model_id, model_run_id))
            for b in boxes:
                per_class[str(b[0])][split] += 1
    path = write_export(str(out), model_run_id, rows)
    return {
        "model_type": model_type,
        "dataset": DATASET,
        "description": DESCRIPTION,
        "model_run_id": model_run_id,
        "model_id": model_id,
        "export": str(path),
        "media_dir": str(out / "media" / DATASET),
        "rows": len(rows),
        "boxes": sum(sum(v.values()) for v in per_class.values()),
        "classes": [c for c in per_class if sum(per_class[c].values())],
        "per_split": sizes,
        "per_class": per_class,
        "limit": limit,
        "seed": seed,
    }
