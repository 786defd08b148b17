"""bench/ingress.py end to end with a tiny request count: the ingress under gunicorn (as its image runs it)
and the floor handler on the session's emulators; every accepted delivery made its run or its count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_the_ingress_bench_runs_and_loses_nothing(emulator_hosts: dict[str, str]) -> None:
    env = {**os.environ, **emulator_hosts, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "ingress.py"), "--requests", "24",
                           "--concurrency", "4", "--profile-requests", "2", "--json"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("new_rps", "new_p99_ms", "floor_rps", "floor_p99_ms", "dup_rps", "label_rps", "label_floor_rps",
                "lost"):
        assert key in out, key
    assert out["lost"] == 0 and out["extra"] == 0 and out["non_200"] == 0, out["checks"]
    assert out["checks"]["new"]["created"] == 24 and out["checks"]["dup"]["runs"] == 12
    assert out["checks"]["label"]["counted"] == 24
    assert out["checks"]["label_floor_sharded"] == {"accepted": 24, "counted": 24, "lost": 0}
    new = out["profile"]["new run"]["calls_per_request"]
    assert new["pubsub.publish (waited)"] == 1 and new["firestore.commit"] >= 1
    assert proc.returncode == 0, proc.stderr[-3000:]
