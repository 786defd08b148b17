"""`make bench`'s table (bench/all.py): every figure from the benchmarks' last lines, a failed one named,
and the README section between the markers replaced, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import all as bench_all  # noqa: E402

RESULTS = {
    "ingress": {"new_rps": 94.2, "new_p99_ms": 271.0, "floor_rps": 222.0, "floor_p99_ms": 130.4, "dup_rps": 176.0,
                "label_rps": 128.0, "label_floor_rps": 301.0, "label_floor_sharded_rps": 150.0, "lost": 0},
    "etl": {"rows": 1_000_000, "rows_per_s": 50_700, "peak_rss_mib": 116.2, "floor_rows_per_s": 169_000},
    "handoff": {"error": "exit 1"},
}
HANDOFF = {"p50_ms": 214.6, "p99_ms": 340.2, "floor_p50_ms": 104.3, "floor_p99_ms": 205.2, "writes_per_run": 32.0,
           "messages_per_run": 8.0}


def test_the_table_holds_every_figure_and_names_a_failure():
    text = bench_all.table(RESULTS, "2026-12-03")
    assert "| ingress: signed webhooks that start a run | 94/s, p99 271 ms | 222/s, p99 130 ms" in text
    assert "| 176/s | 222/s |" in text and "128/s" in text and "301/s" in text and "lost 0" in text
    assert "150/s with the count in 8 shards" in text
    assert "1,000,000 rows: 50,700 rows/s, peak 116 MiB" in text and "169,000 rows/s" in text
    assert "p50 – ms" in text and "(failed in this run: handoff)" in text


def test_the_handoff_row_stands_beside_its_floor():
    text = bench_all.table({**RESULTS, "handoff": HANDOFF}, "2026-12-03")
    assert "| p50 215 ms, p99 340 ms | p50 104 ms, p99 205 ms (two push hops" in text
    assert "32 Firestore writes, 8 Pub/Sub messages" in text and "failed" not in text


def test_only_the_marked_readme_section_is_replaced():
    readme = "intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nrest\n"
    new = bench_all.MARKERS.sub(lambda m: m.group(1) + "NEW\n" + m.group(2), readme)
    assert new == "intro\n<!-- bench:start -->\nNEW\n<!-- bench:end -->\nrest\n"
    assert bench_all.MARKERS.search((ROOT / "README.md").read_text())  # the README has the section
