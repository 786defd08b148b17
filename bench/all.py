"""`make bench`: the ingress, ETL and hand-off benchmarks in a row, and one table of their figures.

Each benchmark's last stdout line is a JSON object (bench/README.md); this collects them into one
Markdown table, prints it and writes it into README.md between the `bench:start` / `bench:end` markers,
so the README shows the last run's figures. `--quick` runs each at its quick size (the ETL's still ends
with its 1,000,000-row figure).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKERS = re.compile(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", re.S)


def run(script: str, args: list[str]) -> dict[str, Any]:
    """The benchmark's last line as JSON (its output streams through); {"error": …} when it failed."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, check=False)
    sys.stdout.write(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        figures = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        figures = {}
    if proc.returncode != 0 or not isinstance(figures, dict) or not figures:
        return {"error": f"exit {proc.returncode}", "seconds": round(time.monotonic() - started)}
    return {**figures, "seconds": round(time.monotonic() - started)}


def table(results: dict[str, dict[str, Any]], when: str) -> str:
    ing, etl, hand = results["ingress"], results["etl"], results["handoff"]

    def num(d: dict[str, Any], key: str, fmt: str = "{:,.0f}") -> str:
        value = d.get(key)
        return fmt.format(value) if isinstance(value, int | float) else "–"

    rows = [
        ("ingress: signed webhooks that start a run", f"{num(ing, 'new_rps')}/s, p99 {num(ing, 'new_p99_ms')} ms",
         f"{num(ing, 'floor_rps')}/s, p99 {num(ing, 'floor_p99_ms')} ms (one HMAC, one transaction, one publish)"),
        ("ingress: half of them redeliveries", f"{num(ing, 'dup_rps')}/s", f"{num(ing, 'floor_rps')}/s"),
        ("ingress: label webhooks counted by a rule", f"{num(ing, 'label_rps')}/s",
         f"{num(ing, 'label_floor_rps')}/s (one transaction per label); {num(ing, 'label_floor_sharded_rps')}/s "
         f"with the count in 8 shards read back, as lbtrain keeps it; lost {num(ing, 'lost')}"),
        ("etl job, synthetic text_single export", f"{num(etl, 'rows')} rows: {num(etl, 'rows_per_s')} rows/s, "
         f"peak {num(etl, 'peak_rss_mib')} MiB", "reading and parsing the export alone: "
         f"{num(etl, 'floor_rows_per_s')} rows/s"),
        ("stage hand-off (job ends → next job launched)", f"p50 {num(hand, 'p50_ms')} ms, p99 "
         f"{num(hand, 'p99_ms')} ms", f"p50 {num(hand, 'floor_p50_ms')} ms, p99 {num(hand, 'floor_p99_ms')} ms "
         "(two push hops, one transaction between)"),
        ("per 4-stage run", f"{num(hand, 'writes_per_run', '{:.0f}')} Firestore writes, "
         f"{num(hand, 'messages_per_run', '{:.0f}')} Pub/Sub messages", "–"),
    ]
    out = [f"| what (`make bench`, {when}) | measured | floor, same run |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    failed = [name for name, r in results.items() if "error" in r]
    if failed:
        out.append(f"\n(failed in this run: {', '.join(failed)})")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="each benchmark at its quick size")
    p.add_argument("--no-readme", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    results = {
        "ingress": run("ingress.py", quick),
        # the 1,000,000-row text_single_classification figure in both modes (--quick: beside 10,000 and 50,000)
        "etl": run("etl.py", quick or ["--rows", "10000,100000,1000000"]),
        "handoff": run("handoff.py", ["--runs", "16"] if args.quick else []),
    }
    text = table(results, time.strftime("%Y-%m-%d", time.gmtime()) + (", quick" if args.quick else ""))
    print(text)
    readme = ROOT / "README.md"
    current = readme.read_text(encoding="utf-8")
    if not args.no_readme and MARKERS.search(current):
        readme.write_text(MARKERS.sub(lambda m: m.group(1) + text + m.group(2), current), encoding="utf-8")
        print("README.md: table updated")
    print(json.dumps(results))
    return 0 if not any("error" in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
