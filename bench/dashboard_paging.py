#!/usr/bin/env python
"""Dashboard paging with many runs: latency of a runs-list page near the top and deep down.

Writes N run documents into a Firestore emulator (started here, or FIRESTORE_EMULATOR_HOST),
then walks the dashboard's JSON list endpoint page by page (cursor = last run of the previous
page, as the page's "Older runs" link does), unfiltered and with a status filter, and prints
per-page latency at the first, middle and last pages. Cursor paging reads only the page (plus the
cursor document), so latency must not grow with depth. The emulator has no real indexes and
scans; on Firestore the composite indexes in infra/firestore.indexes.json serve these queries.

    .venv/bin/python bench/dashboard_paging.py [--runs 10000] [--limit 25] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from lbtrain import domain as d
from lbtrain import emulators
from lbtrain.api.apps import dashboard_app
from lbtrain.config import Config
from lbtrain.deps import Deps

STATUSES = [d.SUCCEEDED, d.FAILED, d.RUNNING, d.SUCCEEDED, d.CANCELLED]
TYPES = ["text_single_classification", "ner", "bounding_box", "image_single_classification"]


def fill(deps: Deps, n: int) -> float:
    db = deps.store.db
    base = d.now() - timedelta(days=30)
    t = time.perf_counter()
    for start in range(0, n, 500):
        batch = db.batch()
        for i in range(start, min(n, start + 500)):
            run_id = f"b{i:06d}"
            doc = d.initial_run(run_id, TYPES[i % len(TYPES)], f"mr-{i % 97}", "m", {}, {"source": "api"}, "etl",
                                base + timedelta(seconds=i * 13))
            doc["status"] = STATUSES[i % len(STATUSES)]
            batch.set(db.collection("runs").document(run_id), doc)
        batch.commit()
    return time.perf_counter() - t


def walk(client, query: str) -> tuple[list[float], int]:  # noqa: ANN001
    """Every page's latency (ms) and the number of runs seen, following next_before to the end."""
    times, seen, before = [], set(), ""
    while True:
        t = time.perf_counter()
        resp = client.get(f"/dashboard/api/runs?{query}" + (f"&before={before}" if before else ""))
        times.append((time.perf_counter() - t) * 1000)
        assert resp.status_code == 200, resp.data[:300]
        ids = resp.json["run_ids"]
        assert not seen & set(ids), "a run shown on two pages"
        seen |= set(ids)
        before = resp.json["next_before"]
        if not before:
            return times, len(seen)


def summary(times: list[float]) -> dict[str, float]:
    k = max(1, len(times) // 20)
    mid = len(times) // 2
    return {"pages": len(times), "first_pages_ms": round(statistics.median(times[:k]), 1),
            "middle_pages_ms": round(statistics.median(times[mid - k // 2: mid + k // 2 + 1]), 1),
            "last_pages_ms": round(statistics.median(times[-k:]), 1), "max_ms": round(max(times), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--limit", type=int, default=25)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    started = None
    if not os.environ.get("FIRESTORE_EMULATOR_HOST"):
        started = emulators.start_firestore(Path(tempfile.mkdtemp(prefix="lbtrain-bench-")))
        os.environ["FIRESTORE_EMULATOR_HOST"] = started.host
    try:
        deps = Deps(Config(project=f"bench-{os.getpid()}", artifact_root=tempfile.mkdtemp()))
        fill_s = fill(deps, args.runs)
        client = dashboard_app(deps).test_client()
        results = {"runs": args.runs, "limit": args.limit, "fill_s": round(fill_s, 1)}
        for name, query in (("all", f"limit={args.limit}"), ("status=FAILED", f"limit={args.limit}&status=FAILED")):
            times, seen = walk(client, query)
            expected = args.runs if name == "all" else sum(1 for i in range(args.runs) if STATUSES[i % 5] == d.FAILED)
            assert seen == expected, f"{name}: saw {seen} runs, expected {expected}"
            results[name] = {**summary(times), "runs_seen": seen}
    finally:
        if started is not None:
            started.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.runs} runs written in {results['fill_s']} s; {args.limit} per page (Firestore emulator)")
    print(f"{'list':<15} {'pages':>6} {'first ms':>9} {'middle ms':>10} {'last ms':>8} {'max ms':>7}  runs seen")
    for name in ("all", "status=FAILED"):
        r = results[name]
        print(f"{name:<15} {r['pages']:>6} {r['first_pages_ms']:>9} {r['middle_pages_ms']:>10} {r['last_pages_ms']:>8} "
              f"{r['max_ms']:>7}  {r['runs_seen']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
