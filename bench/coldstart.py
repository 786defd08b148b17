#!/usr/bin/env python
"""Cold start of each service and function entry point: import time and resident memory.

Each module is imported in a fresh interpreter, several times; the median is printed. Cloud Run
charges this on every new instance, so heavy libraries (aiplatform, torch, spaCy) must stay out of
the ingress and the dashboard.

    .venv/bin/python bench/coldstart.py [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ENTRY_POINTS = {
    "ingress": "services.ingress.main",
    "launcher": "services.launcher.main",
    "dashboard": "services.dashboard.main",
    "job_events": "functions.job_events.main",
    "reconciler": "functions.reconciler.main",
    "serving": "jobs.serving",
    "job entrypoint": "jobs.main",
}
HEAVY = ("torch", "google.cloud.aiplatform", "spacy", "sklearn")

PROBE = """
import json, resource, sys, time
t = time.perf_counter()
import {module}
seconds = time.perf_counter() - t
heavy = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "heavy": heavy}}))
"""


def measure(module: str, repeat: int) -> dict:
    env = {**os.environ, "GOOGLE_CLOUD_PROJECT": "coldstart", "PYTHONDONTWRITEBYTECODE": "1"}
    samples = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY)], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "module": module,
        "import_seconds_median": round(statistics.median(s["seconds"] for s in samples), 3),
        "rss_mib_median": round(statistics.median(s["rss_mib"] for s in samples), 1),
        "heavy_modules": sorted({m for s in samples for m in s["heavy"]}),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = {name: measure(module, args.repeat) for name, module in ENTRY_POINTS.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'entry point':<16} {'module':<28} {'import s (median)':>17} {'RSS MiB':>8}  heavy modules loaded")
    for name, r in results.items():
        print(f"{name:<16} {r['module']:<28} {r['import_seconds_median']:>17.3f} {r['rss_mib_median']:>8.1f}  "
              f"{', '.join(r['heavy_modules']) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
