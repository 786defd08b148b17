#!/usr/bin/env python
"""VM provisionings and billed resources per run, per model type: every stage a Vertex CustomJob (before)
against each stage on the service that suits it (after: JOB_BACKEND=cloudrun's defaults, or STAGE_BACKENDS).

Computed from job records: each stage's job and how long it ran. Sources (one of):
  --runs FILE      run records as `GET /runs/<id>` returns them (a JSON list, or one per line): a step's
                   seconds are `ended_at - started_at`;
  --quality FILE   `bench/quality.py --json` output (etl/train/evaluate seconds of the real jobs).
The routing is the code's own (lbtrain.adapters.dispatch_backend.backend_for, machine_for, size_for), so
a JOB_MACHINES / MODEL_OPTIONS / STAGE_BACKENDS given in the environment is what is priced.

Billing model (stated in the README's cost section, list prices us-central1 as of 2025): a CustomJob is
billed per node-hour of its machine, rounded up to 30 s, and provisions one VM; a Cloud Run job execution
per vCPU-second and GiB-second of its task, from container start (a 10 s start is added), no VM to
provision. A deploy job waits for its serving target: ~15 min for a Vertex endpoint deploy, ~1 min for a
Cloud Run revision (DEPLOY_SECONDS, assumptions). Serving: a Vertex endpoint keeps one node up all month;
a Cloud Run service with min instances 0 bills only request time.

    .venv/bin/python bench/provisioning.py --quality quality.json [--runs-per-month 30] [--predictions 100000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lbtrain import config as configmod  # noqa: E402
from lbtrain.adapters.cloudrun_backend import size_for  # noqa: E402
from lbtrain.adapters.dispatch_backend import backend_for  # noqa: E402
from lbtrain.adapters.vertex_backend import machine_for  # noqa: E402

STAGES = ("etl", "train", "evaluate", "deploy")
# List prices, us-central1, USD, as of 2025 (cloud.google.com/vertex-ai/pricing, cloud.google.com/run/pricing).
VERTEX_TRAINING_PER_HOUR = {"n1-standard-2": 0.109250, "n1-standard-4": 0.218499, "n1-standard-8": 0.436998,
                            "n1-standard-16": 0.873996, "n1-highmem-2": 0.136054}
VERTEX_T4_PER_HOUR = 0.4025
VERTEX_PREDICTION_PER_HOUR = {"n1-standard-2": 0.1095, "n1-standard-4": 0.2190}
CLOUD_RUN_JOB_VCPU_S, CLOUD_RUN_JOB_GIB_S = 0.000018, 0.000002          # jobs (instance-based)
CLOUD_RUN_SVC_VCPU_S, CLOUD_RUN_SVC_GIB_S = 0.000024, 0.0000025        # services, request-based billing
CLOUD_RUN_PER_MILLION_REQUESTS = 0.40
CLOUD_RUN_START_S = 10.0
VERTEX_INCREMENT_S = 30.0
DEPLOY_SECONDS = {"vertex": 900.0, "cloudrun": 60.0, "local": 5.0}
HOURS_PER_MONTH = 730.0
# Per prediction: seconds of one instance (a CPU model on the serving image, our measured order of magnitude).
PREDICTION_SECONDS = {"text_single_classification": 0.02, "text_multi_classification": 0.02, "ner": 0.05,
                      "image_single_classification": 0.05, "image_multi_classification": 0.05, "bounding_box": 0.15}


def _seconds(step: dict[str, Any]) -> float | None:
    start, end = step.get("started_at") or step.get("launched_at"), step.get("ended_at")
    if not start or not end:
        return None
    parse = lambda s: datetime.fromisoformat(str(s).replace("Z", "+00:00"))  # noqa: E731
    return max(0.0, (parse(end) - parse(start)).total_seconds())


def records_from_runs(path: Path) -> list[dict[str, Any]]:
    """Job records (model type, stage, backend, seconds) of each run record."""
    text = path.read_text()
    runs = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x]
    out = []
    for run in runs:
        for step in run.get("steps", []):
            seconds = _seconds(step)
            if seconds is not None and step.get("stage") in STAGES:
                out.append({"run_id": run["run_id"], "model_type": run["model_type"], "stage": step["stage"],
                            "backend": (step.get("job") or {}).get("backend", ""), "seconds": seconds})
    return out


def records_from_quality(path: Path) -> list[dict[str, Any]]:
    """bench/quality.py measured etl/train/evaluate; deploy is the wait for the serving target."""
    text = path.read_text().strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    return [{"run_id": f"quality-{row['model_type']}", "model_type": row["model_type"], "stage": stage,
             "backend": "", "seconds": float(row[f"{stage}_seconds"])}
            for row in rows for stage in ("etl", "train", "evaluate")]


def price_stage(config: configmod.Config, model_type: str, stage: str, seconds: float | None,
                serving: str) -> dict[str, Any]:
    """One stage's job on the backend `config` routes it to: provisionings, resources, USD."""
    backend = backend_for(config, model_type, stage)
    if stage == "deploy" or seconds is None:
        seconds = DEPLOY_SECONDS[serving]
    machine = machine_for(config, model_type, stage)
    if backend == "vertex":
        billed = math.ceil(seconds / VERTEX_INCREMENT_S) * VERTEX_INCREMENT_S
        hours = billed / 3600
        rate = VERTEX_TRAINING_PER_HOUR.get(machine.machine_type, VERTEX_TRAINING_PER_HOUR["n1-standard-4"])
        rate += VERTEX_T4_PER_HOUR * machine.accelerator_count if machine.gpu else 0.0
        return {"backend": backend, "provisionings": 1, "node_hours": hours, "vcpu_s": 0.0, "gib_s": 0.0,
                "usd": hours * rate}
    size = size_for(machine)
    billed = seconds + CLOUD_RUN_START_S
    vcpu_s, gib_s = billed * size.cpu, billed * size.memory_gib
    return {"backend": backend, "provisionings": 0, "node_hours": 0.0, "vcpu_s": vcpu_s, "gib_s": gib_s,
            "usd": vcpu_s * CLOUD_RUN_JOB_VCPU_S + gib_s * CLOUD_RUN_JOB_GIB_S}


def serving_month(model_type: str, serving: str, predictions: int) -> float:
    if serving == "vertex":
        return HOURS_PER_MONTH * VERTEX_PREDICTION_PER_HOUR["n1-standard-2"]
    from jobs.cloudrun_deploy import DEFAULT_PROFILE, PROFILES

    profile = PROFILES.get(model_type, DEFAULT_PROFILE)
    seconds = predictions * PREDICTION_SECONDS.get(model_type, 0.05)  # no concurrency assumed: an upper bound
    memory = float(profile.memory.removesuffix("Gi"))
    return (seconds * (float(profile.cpu) * CLOUD_RUN_SVC_VCPU_S + memory * CLOUD_RUN_SVC_GIB_S)
            + predictions / 1e6 * CLOUD_RUN_PER_MILLION_REQUESTS)


def compare(records: list[dict[str, Any]], before: configmod.Config, after: configmod.Config,
            runs_per_month: int, predictions: int) -> list[dict[str, Any]]:
    by_type: dict[str, dict[str, list[float]]] = {}
    for r in records:
        by_type.setdefault(r["model_type"], {}).setdefault(r["stage"], []).append(r["seconds"])
    rows = []
    for model_type, stages in sorted(by_type.items()):
        mean = {s: sum(v) / len(v) for s, v in stages.items()}
        row: dict[str, Any] = {"model_type": model_type,
                               "stage_seconds": {s: round(mean[s], 1) for s in STAGES if s in mean}}
        for label, config, serving in (("before", before, "vertex"), ("after", after, "cloudrun")):
            priced = [price_stage(config, model_type, s, mean.get(s), serving) for s in STAGES]
            run_usd = sum(p["usd"] for p in priced)
            row[label] = {
                "backends": {s: p["backend"] for s, p in zip(STAGES, priced, strict=True)},
                "vm_provisionings": sum(p["provisionings"] for p in priced),
                "node_hours": round(sum(p["node_hours"] for p in priced), 4),
                "vcpu_s": round(sum(p["vcpu_s"] for p in priced)),
                "gib_s": round(sum(p["gib_s"] for p in priced)),
                "usd_per_run": round(run_usd, 4),
                "usd_month_training": round(run_usd * runs_per_month, 2),
                "usd_month_serving": round(serving_month(model_type, serving, predictions), 2),
            }
            row[label]["usd_month"] = round(row[label]["usd_month_training"] + row[label]["usd_month_serving"], 2)
        rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", type=Path, help="run records (GET /runs/<id>), a JSON list or JSON lines")
    src.add_argument("--quality", type=Path, nargs="+", help="bench/quality.py --json outputs")
    p.add_argument("--runs-per-month", type=int, default=30)
    p.add_argument("--predictions", type=int, default=100_000, help="predictions per month per model type")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    records = records_from_runs(args.runs) if args.runs else [r for f in args.quality for r in records_from_quality(f)]
    env = {k: v for k, v in os.environ.items() if k in ("JOB_MACHINES", "MODEL_OPTIONS", "STAGE_BACKENDS")}
    before = configmod.from_env({**env, "JOB_BACKEND": "vertex", "STAGE_BACKENDS": ""})
    after = configmod.from_env({**env, "JOB_BACKEND": "cloudrun"})
    rows = compare(records, before, after, args.runs_per_month, args.predictions)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"| model type | stage s (etl/train/eval) | VMs per run before → after | billed per run before | "
          f"billed per run after | $/run before → after | $/month ({args.runs_per_month} runs + "
          f"{args.predictions:,} predictions) before → after |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b, a = r["before"], r["after"]
        secs = "/".join(str(r["stage_seconds"].get(s, "–")) for s in ("etl", "train", "evaluate"))
        after_billed = f"{a['vcpu_s']:,} vCPU-s, {a['gib_s']:,} GiB-s" + (
            f", {a['node_hours']} node-h" if a["node_hours"] else "")
        print(f"| `{r['model_type']}` | {secs} | {b['vm_provisionings']} → {a['vm_provisionings']} | "
              f"{b['node_hours']} node-h | {after_billed} | {b['usd_per_run']:.3f} → {a['usd_per_run']:.3f} | "
              f"{b['usd_month']:.2f} → {a['usd_month']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
