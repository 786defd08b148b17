#!/usr/bin/env python
"""Model quality per model type on its reference data, through the project's own job code.

For each model type: build the reference model run (lbtrain.datasets), then run the etl, train
and evaluate jobs exactly as the pipeline does (`python -m jobs.main`, one process per stage),
and print the dataset, split sizes, the headline metric on the held-out test split, the train
job's wall time and its peak resident memory (from wait4, the train process alone).

    .venv/bin/python bench/quality.py [--model-types a,b] [--limit N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lbtrain import config as configmod
from lbtrain import datasets, pipelines, storage


def run_stage(env: dict[str, str], run_id: str, stage: str, model_run_id: str, model_type: str,
              root: Path, upstream: dict[str, str], params: dict[str, Any],
              model_sha256: str = "") -> tuple[dict[str, Any], float, float]:
    """One job; returns (outputs.json, wall seconds, peak RSS MiB of that process). `model_sha256` is
    the train step's recorded model digest, passed on as the launcher does."""
    outputs = storage.run_dir(str(root / "artifacts"), run_id, stage, 1)
    inputs = root / "artifacts" / "runs" / run_id / "inputs" / f"{stage}-a1.json"
    storage.write_json(str(inputs), {"run_id": run_id, "model_type": model_type, "model_run_id": model_run_id,
                                     "model_id": "", "params": params, "stage": stage, "attempt": 1,
                                     "upstream": upstream})
    cmd = [sys.executable, "-m", "jobs.main", "--run-id", run_id, "--stage", stage, "--attempt", "1",
           "--inputs", str(inputs), "--outputs", outputs, *(["--model-sha256", model_sha256] if model_sha256 else [])]
    started = time.monotonic()
    with open(root / f"{run_id}-{stage}.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        error = storage.local_path(storage.join(outputs, "error.json"))
        detail = error.read_text() if error.exists() else (root / f"{run_id}-{stage}.log").read_text()[-2000:]
        raise RuntimeError(f"{model_type} {stage} failed: {detail}")
    return storage.read_json(storage.join(outputs, "outputs.json")), seconds, usage.ru_maxrss / 1024


def measure(model_type: str, root: Path, limit: int | None, params: dict[str, Any]) -> dict[str, Any]:
    model_run_id = f"quality-{model_type.replace('_', '-')}"
    summary = datasets.build(model_type, str(root / "labelbox"), model_run_id, limit=limit)
    config = configmod.Config(artifact_root=str(root / "artifacts"), labelbox_dir=str(root / "labelbox"),
                              project="bench", deployment_name="bench")
    env = {**os.environ, **configmod.to_env(config), "PYTHONUNBUFFERED": "1"}
    run_id = f"q{abs(hash(model_type)) % 10**8:08d}"
    upstream: dict[str, str] = {}
    timings: dict[str, tuple[float, float]] = {}
    outputs: dict[str, Any] = {}
    for stage in ("etl", "train", "evaluate"):
        sha256 = str(outputs.get("train", {}).get("model_sha256") or "")
        out, seconds, rss = run_stage(env, run_id, stage, model_run_id, model_type, root, dict(upstream), params,
                                      sha256)
        upstream[stage] = storage.run_dir(str(root / "artifacts"), run_id, stage, 1)
        timings[stage] = (seconds, rss)
        outputs[stage] = out
    metric = pipelines.get(model_type).headline_metric
    etl = outputs["etl"]["metrics"]
    return {
        "model_type": model_type,
        "dataset": summary.get("dataset"),
        "rows": summary.get("rows"),
        "split_sizes": {s: etl.get(s) for s in ("train", "validation", "test")},
        "metric": metric,
        "value": outputs["evaluate"]["metrics"].get(metric),
        "train_seconds": round(timings["train"][0], 1),
        "train_peak_rss_mib": round(timings["train"][1]),
        "etl_seconds": round(timings["etl"][0], 1),
        "evaluate_seconds": round(timings["evaluate"][0], 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-types", default="", help="comma-separated (default: every type with a dataset)")
    p.add_argument("--limit", type=int, default=None, help="subset size (default: the full reference data)")
    p.add_argument("--params", default="{}", help="JSON run params passed to every job")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with data, models and logs")
    args = p.parse_args()
    model_types = [m for m in args.model_types.split(",") if m] or [
        mt for mt in pipelines.names() if mt in datasets.MODULES]
    root = Path(tempfile.mkdtemp(prefix="lbtrain-quality-"))
    results = []
    try:
        for model_type in model_types:
            print(f"... {model_type}", file=sys.stderr, flush=True)
            try:
                results.append(measure(model_type, root, args.limit, json.loads(args.params)))
            except Exception as exc:  # noqa: BLE001 - one type failing must not lose the others' numbers
                results.append({"model_type": model_type, "error": f"{type(exc).__name__}: {exc}"[:500]})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'model type':<28} {'dataset':<22} {'train/val/test':<18} {'metric':<11} {'value':>6} "
              f"{'train s':>8} {'train MiB':>9}")
        for r in results:
            if "error" in r:
                print(f"{r['model_type']:<28} ERROR {r['error']}")
                continue
            sizes = "/".join(str(r["split_sizes"][s]) for s in ("train", "validation", "test"))
            print(f"{r['model_type']:<28} {r['dataset']:<22} {sizes:<18} {r['metric']:<11} {r['value']:>6.4f} "
                  f"{r['train_seconds']:>8.1f} {r['train_peak_rss_mib']:>9}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
