#!/usr/bin/env python
"""ETL throughput and peak memory of a text export: a synthetic Export v2 model run of N rows for
text_single_classification (inline text, one radio answer per row, a split per row), run through the
project's own etl job (`python -m jobs.main --stage etl`, via bench/quality.py's run_stage) with the
file-backed Labelbox, beside the floor: reading and json-parsing the same export file alone.

    .venv/bin/python bench/etl.py [--rows 10000,100000,1000000] [--quick] [--keep DIR]

The last line printed is one JSON object: `rows`, `rows_per_s` and `peak_rss_mib` of the largest N,
and `per_n` with the figures of every N.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402 - bench/quality.py, beside this script

from lbtrain import config as configmod  # noqa: E402

MODEL_TYPE = "text_single_classification"
MODEL_ID = "bench-model"
QUESTION = "sentiment"
CLASSES = ("positive", "negative", "neutral")
WORDS = ("the film was a quiet triumph of mood and craft though the second act drags and the score "
         "overwhelms every scene it touches yet the cast carries it with wit warmth and nerve").split()
DEFAULT_ROWS = (10_000, 100_000, 1_000_000)
QUICK_ROWS = (10_000, 50_000)


def export_row(i: int, rng: random.Random, model_run_id: str) -> dict[str, Any]:
    """One Export v2 row as lbtrain.datasets.common.export_v2_row shapes it. Every 50th row has no
    split (unassigned: predict-only), every 97th no label (predict-only)."""
    cls = CLASSES[i % len(CLASSES)]
    split = "UNASSIGNED" if i % 50 == 49 else ("TRAINING", "TRAINING", "TRAINING", "TRAINING", "TRAINING",
                                                "VALIDATION", "TEST")[i % 7]
    text = " ".join(rng.choices(WORDS, k=rng.randint(8, 30)))
    answer = {"feature_id": f"f{i}", "feature_schema_id": f"s-{cls}", "name": cls, "value": cls,
              "classifications": []}
    classifications = [{"feature_id": f"q{i}", "feature_schema_id": "s-q", "name": QUESTION, "value": QUESTION,
                        "radio_answer": answer}]
    labels = [] if i % 97 == 96 else [
        {"id": f"label-{i}", "annotations": {"objects": [], "classifications": classifications,
                                             "relationships": []}}]
    return {
        "data_row": {"id": f"dr-{i:08d}", "global_key": f"key-{i}", "external_id": f"key-{i}", "row_data": text},
        "media_attributes": {"mime_type": "text/plain"},
        "experiments": {MODEL_ID: {"name": "lbtrain bench", "runs": {model_run_id: {
            "name": model_run_id, "split": split, "labels": labels, "predictions": []}}}},
    }


def write_export(labelbox_dir: Path, model_run_id: str, n: int, seed: int = 0) -> Path:
    path = labelbox_dir / "model_runs" / model_run_id / "export.ndjson"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for i in range(n):
            out.write(json.dumps(export_row(i, rng, model_run_id)) + "\n")
    tmp.rename(path)
    return path


def floor_seconds(path: Path) -> float:
    """Reading and json-parsing the export alone, a line at a time (what any ETL must at least do)."""
    started = time.monotonic()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            json.loads(line)
    return time.monotonic() - started


def measure(root: Path, n: int) -> dict[str, Any]:
    model_run_id = f"bench-etl-{n}"
    export = write_export(root / "labelbox", model_run_id, n)
    config = configmod.Config(artifact_root=str(root / "artifacts"), labelbox_dir=str(root / "labelbox"),
                              project="bench", deployment_name="bench")
    env = {**os.environ, **configmod.to_env(config), "PYTHONUNBUFFERED": "1"}
    run_id = f"etl-{n}-{int(time.time() * 1000) % 10**9}"
    outputs, seconds, rss = quality.run_stage(env, run_id, "etl", model_run_id, MODEL_TYPE, root, {}, {})
    floor = floor_seconds(export)
    return {
        "rows": n,
        "seconds": round(seconds, 2),
        "rows_per_s": round(n / seconds),
        "peak_rss_mib": round(rss, 1),
        "floor_seconds": round(floor, 2),
        "floor_rows_per_s": round(n / floor),
        "ratio_to_floor": round(seconds / floor, 2),
        "export_mib": round(export.stat().st_size / 2**20, 1),
        "examples": outputs["metrics"].get("examples") if "metrics" in outputs else outputs.get("examples"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(str(n) for n in DEFAULT_ROWS),
                        help="comma-separated row counts (default 10000,100000,1000000)")
    parser.add_argument("--quick", action="store_true", help="10000,50000 rows")
    parser.add_argument("--keep", metavar="DIR",
                        help="work in DIR and keep it (exports already there are reused)")
    args = parser.parse_args(argv)
    sizes = sorted(QUICK_ROWS if args.quick else (int(s) for s in args.rows.split(",") if s.strip()))
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lbtrain-bench-etl-"))
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(f"etl of a synthetic {MODEL_TYPE} export; {os.cpu_count()} CPUs, load average {load:.2f}")
    print(f"{'rows':>9} {'seconds':>8} {'rows/s':>8} {'peak MiB':>9} {'floor s':>8} {'floor rows/s':>12} "
          f"{'x floor':>8} {'export MiB':>10}")
    results = []
    try:
        for n in sizes:
            r = measure(root, n)
            results.append(r)
            print(f"{r['rows']:>9} {r['seconds']:>8.2f} {r['rows_per_s']:>8} {r['peak_rss_mib']:>9.1f} "
                  f"{r['floor_seconds']:>8.2f} {r['floor_rows_per_s']:>12} {r['ratio_to_floor']:>8.2f} "
                  f"{r['export_mib']:>10.1f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    last = results[-1]
    print(json.dumps({"rows": last["rows"], "rows_per_s": last["rows_per_s"], "peak_rss_mib": last["peak_rss_mib"],
                      "floor_rows_per_s": last["floor_rows_per_s"], "load_average": round(load, 2),
                      "per_n": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
