#!/usr/bin/env python
"""Training speed of the three torch model types, per device this machine has (the CPU always,
CUDA when torch sees it): training throughput (examples/s over the epochs run) and the time to the
quality bar (the first epoch whose validation score reaches the README's bar, seconds since
training began), plus the held-out test metric, through the project's own etl → train → evaluate
jobs (`python -m jobs.main`, via bench/quality.py's run_stage).

    .venv/bin/python bench/train_speed.py [--model-types a,b] [--limit N] [--devices cpu,cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402 - bench/quality.py, beside this script

from lbtrain import config as configmod  # noqa: E402
from lbtrain import datasets, pipelines, storage  # noqa: E402

TYPES = ("image_single_classification", "image_multi_classification", "bounding_box")
# The README's quality bars (issue 3) on the held-out test split; here reached on validation.
BARS = {"image_single_classification": 0.98, "image_multi_classification": 0.97, "bounding_box": 0.90}
VALUE_KEY = {"image_single_classification": "validation_score", "image_multi_classification": "validation_score",
             "bounding_box": "val_map50"}


def devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def measure(model_type: str, device: str, root: Path, limit: int | None, params: dict[str, Any]) -> dict[str, Any]:
    model_run_id = f"speed-{model_type.replace('_', '-')}"
    if not (root / "labelbox" / "model_runs" / model_run_id).exists():
        datasets.build(model_type, str(root / "labelbox"), model_run_id, limit=limit)
    config = configmod.Config(artifact_root=str(root / "artifacts"), labelbox_dir=str(root / "labelbox"),
                              project="bench", deployment_name="bench")
    env = {**os.environ, **configmod.to_env(config), "PYTHONUNBUFFERED": "1"}
    run_id = f"s-{device}-{abs(hash(model_type)) % 10**6:06d}"
    upstream: dict[str, str] = {}
    outputs: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    run_params = {**params, "device": device}
    for stage in ("etl", "train", "evaluate"):
        sha256 = str(outputs.get("train", {}).get("model_sha256") or "")
        out, wall, _ = quality.run_stage(env, run_id, stage, model_run_id, model_type, root, dict(upstream),
                                         run_params, sha256)
        upstream[stage] = storage.run_dir(str(root / "artifacts"), run_id, stage, 1)
        outputs[stage], seconds[stage] = out, wall
    train = storage.read_json(storage.join(upstream["train"], "train_metrics.json"))
    history = train["history"]
    fit_seconds = float(history[-1]["seconds"]) if history else None
    examples = train["train_size"] * train["epochs_run"]
    bar = BARS[model_type]
    reached = next((h for h in history if (h.get(VALUE_KEY[model_type]) or 0) >= bar), None)
    metric = pipelines.get(model_type).headline_metric
    return {
        "model_type": model_type, "device": train.get("device"), "device_name": train.get("device_name"),
        "precision": train.get("device_precision"), "train_size": train["train_size"],
        "epochs_run": train["epochs_run"], "stopped_by": train.get("stopped_by") or train.get("stopped_early"),
        "examples_per_second": round(examples / fit_seconds, 1) if fit_seconds else None,
        "bar": bar, "seconds_to_bar": reached["seconds"] if reached else None,
        "epoch_to_bar": reached["epoch"] if reached else None,
        "test_metric": metric, "test_value": outputs["evaluate"]["metrics"].get(metric),
        "train_job_seconds": round(seconds["train"], 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-types", default=",".join(TYPES))
    p.add_argument("--devices", default="", help="comma-separated (default: every device found)")
    p.add_argument("--limit", type=int, default=None, help="subset size (default: the full reference data)")
    p.add_argument("--params", default="{}", help="JSON run params passed to every job")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lbtrain-speed-"))
    results = []
    try:
        for device in [d for d in args.devices.split(",") if d] or devices():
            for model_type in [m for m in args.model_types.split(",") if m]:
                print(f"... {model_type} on {device}", file=sys.stderr, flush=True)
                try:
                    results.append(measure(model_type, device, root, args.limit, json.loads(args.params)))
                except Exception as exc:  # noqa: BLE001 - keep the other measurements
                    results.append({"model_type": model_type, "device": device,
                                    "error": f"{type(exc).__name__}: {exc}"[:500]})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'model type':<28} {'device':<8} {'examples/s':>10} {'bar':>5} {'s to bar':>8} {'epochs':>6} "
              f"{'test':>6} {'train job s':>11}")
        for r in results:
            if "error" in r:
                print(f"{r['model_type']:<28} {r['device']:<8} ERROR {r['error']}")
                continue
            print(f"{r['model_type']:<28} {r['device']:<8} {r['examples_per_second'] or '-':>10} {r['bar']:>5} "
                  f"{r['seconds_to_bar'] if r['seconds_to_bar'] is not None else 'never':>8} {r['epochs_run']:>6} "
                  f"{r['test_value']:>6.4f} {r['train_job_seconds']:>11}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
