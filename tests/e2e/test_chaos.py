"""bench/chaos.py as a test: 20 runs while `lbtrain dev` is SIGKILLed and restarted at random moments,
every webhook is sent three times at once and every Pub/Sub message is published twice more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_kills_and_a_redelivery_storm_lose_no_run_and_duplicate_no_job(emulator_hosts: dict[str, str]) -> None:
    env = {**os.environ, **emulator_hosts, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "chaos.py"), "--runs", "20", "--kills", "4",
                           "--no-baseline", "--json", "--seed", "11"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    [chaos] = json.loads(proc.stdout.strip().splitlines()[-1])["phases"]
    assert chaos["kills"] == 4 and chaos["down_seconds"] > 0
    assert sum(chaos["copies_published"].values()) >= 2 * 20 * 5  # every run's messages were copied twice
    assert chaos["statuses"] == {"SUCCEEDED": 20} and chaos["runs_lost"] == 0
    assert chaos["runs_per_model_run"] == {"1": 20}  # three concurrent deliveries each, one run
    assert chaos["answers_5xx"] == 0, chaos["webhook_answers"]
    assert chaos["executions"] == chaos["step_attempts"] == 80  # one job per step attempt, none twice
    assert chaos["duplicate_executions"] == 0 and chaos["orphan_jobs"] == 0
    assert proc.returncode == 0, proc.stderr[-3000:]
