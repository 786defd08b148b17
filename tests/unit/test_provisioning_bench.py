"""bench/provisioning.py: VM provisionings and billed resources per run, from job records, priced with
the code's own routing (backend_for, machine_for, size_for)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lbtrain.config import from_env

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import provisioning  # noqa: E402


def run_record(run_id: str, model_type: str, seconds: dict[str, int]) -> dict:
    steps = [{"stage": s, "job": {"backend": "vertex"}, "started_at": "2026-11-20T10:00:00Z",
              "ended_at": f"2026-11-20T10:{sec // 60:02d}:{sec % 60:02d}Z"} for s, sec in seconds.items()]
    return {"run_id": run_id, "model_type": model_type, "steps": steps}


def test_every_stage_a_vm_before_and_none_after_for_cpu_types(tmp_path):
    runs = [run_record("r1", "ner", {"etl": 20, "train": 90, "evaluate": 30, "deploy": 40}),
            run_record("r2", "ner", {"etl": 40, "train": 110, "evaluate": 30, "deploy": 40})]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    records = provisioning.records_from_runs(path)
    assert len(records) == 8 and {r["seconds"] for r in records if r["stage"] == "etl"} == {20.0, 40.0}
    (row,) = provisioning.compare(records, from_env({"JOB_BACKEND": "vertex"}), from_env({"JOB_BACKEND": "cloudrun"}),
                                  runs_per_month=30, predictions=100_000)
    assert row["stage_seconds"]["train"] == 100.0
    assert row["before"]["vm_provisionings"] == 4 and row["after"]["vm_provisionings"] == 0
    # Rounded up to 30 s on n1-standard-4: etl 30, train 100 → 120, evaluate 30; deploy waits 900 s.
    assert row["before"]["node_hours"] == round((30 + 120 + 30 + 900) / 3600, 4)
    # Cloud Run: 4 vCPU / 16 GiB per stage (from n1-standard-4), each +10 s start, deploy waits 60 s.
    assert row["after"]["vcpu_s"] == 4 * (40 + 110 + 40 + 70) and row["after"]["gib_s"] == 16 * (40 + 110 + 40 + 70)
    assert row["after"]["usd_per_run"] < row["before"]["usd_per_run"]
    assert row["before"]["usd_month_serving"] == round(730 * 0.1095, 2)  # an always-on endpoint node
    assert row["after"]["usd_month_serving"] < 1.0


def test_automl_and_gpu_stages_stay_on_vertex(tmp_path):
    records = [{"run_id": "q", "model_type": "bounding_box", "stage": s, "backend": "", "seconds": 100.0}
               for s in ("etl", "train", "evaluate")]
    after = from_env({"JOB_BACKEND": "cloudrun", "MODEL_OPTIONS": '{"bounding_box": {"training": "automl"}}'})
    (row,) = provisioning.compare(records, from_env({"JOB_BACKEND": "vertex"}), after, 30, 0)
    assert row["after"]["backends"] == {"etl": "cloudrun", "train": "vertex", "evaluate": "cloudrun",
                                        "deploy": "cloudrun"}
    assert row["after"]["vm_provisionings"] == 1


def test_the_script_prints_the_readme_table(tmp_path):
    quality = tmp_path / "q.json"
    quality.write_text(json.dumps({"model_type": "text_single_classification", "etl_seconds": 1.0,
                                   "train_seconds": 54.0, "evaluate_seconds": 6.0}) + "\n")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "provisioning.py"), "--quality", str(quality)],
                         capture_output=True, text=True, check=True, timeout=60, cwd=ROOT)
    assert "| `text_single_classification` | 1.0/54.0/6.0 | 4 → 0 |" in out.stdout
