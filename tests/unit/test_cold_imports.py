"""Cloud Run cold start: the service entry points must not drag in heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["torch", "sklearn", "numpy", "pandas", "google.cloud.aiplatform", "google.cloud.firestore", "spacy",
         "google.cloud.run_v2"]


@pytest.mark.parametrize("module", ["services.ingress.main", "services.launcher.main", "services.dashboard.main",
                                    "functions.job_events.main", "functions.reconciler.main"])
def test_entry_point_imports_no_heavy_library(module: str):
    code = f"import sys, json; import {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env={"PATH": "/usr/bin:/bin", "GOOGLE_CLOUD_PROJECT": "cold"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_ingress_imports_neither_job_client_with_cloud_run_stages_configured():
    """With STAGE_BACKENDS naming cloudrun and vertex, building the ingress still loads neither client:
    only launchers, job-events and the reconciler hold a job backend."""
    code = ("import sys, json; import services.ingress.main; "
            "print(json.dumps([m for m in ('google.cloud.run_v2', 'google.cloud.aiplatform') if m in sys.modules]))")
    env = {"PATH": "/usr/bin:/bin", "GOOGLE_CLOUD_PROJECT": "cold", "JOB_BACKEND": "cloudrun",
           "STAGE_BACKENDS": '{"*/etl": "cloudrun", "*/train": "vertex"}', "SERVING_BACKENDS": '{"*": "cloudrun"}'}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, env=env)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
