#!/usr/bin/env python
"""ETL throughput and peak memory of a text export: a synthetic Export v2 model run of N rows for one of
the text model types (inline text, a split per row; text_single_classification: one radio answer per
row, text_multi_classification: a checklist, ner: entity spans), run through the project's own etl job
(`python -m jobs.main --stage etl`, via bench/quality.py's run_stage) with the file-backed Labelbox,
beside the floor: reading and json-parsing the same export file alone.

    .venv/bin/python bench/etl.py [--model-type ner] [--rows 10000,100000,1000000] [--quick] [--keep DIR]

The last line printed is one JSON object: `rows`, `rows_per_s` and `peak_rss_mib` of the largest N,
and `per_n` with the figures of every N.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402 - bench/quality.py, beside this script

from lbtrain import config as configmod  # noqa: E402

MODEL_TYPES = ("text_single_classification", "text_multi_classification", "ner")
MODEL_TYPE = MODEL_TYPES[0]
MODEL_ID = "bench-model"
QUESTION = "sentiment"
CLASSES = ("positive", "negative", "neutral")
CHECKLIST = "topics"
TOPICS = ("food", "sports", "finance", "music", "travel")
ENTITIES = {"person": ("Ada Lovelace", "Alan Turing", "Grace Hopper"), "loc": ("Paris", "New York", "Zürich"),
            "org": ("Acme Corp", "Initech")}
WORDS = ("the film was a quiet triumph of mood and craft though the second act drags and the score "
         "overwhelms every scene it touches yet the cast carries it with wit warmth and nerve").split()
SPLITS = ("TRAINING", "TRAINING", "TRAINING", "TRAINING", "TRAINING", "VALIDATION", "TEST")
DEFAULT_ROWS = (10_000, 100_000, 1_000_000)
# --quick: 50,000 rows, and for text_single_classification the 1,000,000-row figure too (~30 s more)
QUICK_ROWS = {"text_single_classification": (10_000, 50_000, 1_000_000)}
QUICK_ROWS_OTHER = (10_000, 50_000)
VARIANTS = 4096  # distinct texts/labels the rows draw from (rendered once: writing 1M rows takes seconds)
# One export line; row_data and labels are JSON already.
LINE = ('{"data_row": {"id": "dr-%08d", "global_key": "key-%d", "external_id": "key-%d", "row_data": %s}, '
        '"media_attributes": {"mime_type": "text/plain"}, "experiments": {"' + MODEL_ID + '": {"name": '
        '"lbtrain bench", "runs": {%s: {"name": %s, "split": "%s", "labels": %s, "predictions": []}}}}}\n')


def _label(k: int, annotations: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": f"label-{k}", "annotations": {"objects": [], "classifications": [], "relationships": [],
                                                 **annotations}}]


def variant(model_type: str, k: int, rng: random.Random) -> tuple[str, list[dict[str, Any]]]:
    """(text, labels) of one row: text of 8–30 words; a radio answer out of 3 classes
    (text_single_classification), a checklist of 0–3 topics (text_multi_classification), or 0–3
    entity mentions placed in the text, with Labelbox's inclusive `end` (ner)."""
    words = rng.choices(WORDS, k=rng.randint(8, 30))
    if model_type == "ner":
        spans = []
        for _ in range(rng.randint(0, 3)):
            etype = rng.choice(sorted(ENTITIES))
            words.insert(rng.randint(0, len(words)), f"\0{etype}\0{rng.choice(ENTITIES[etype])}")
        text = ""
        for w in words:
            text += " " if text else ""
            if w.startswith("\0"):
                _, etype, token = w.split("\0")
                spans.append((etype, len(text), token))
                w = token
            text += w
        objects = [{"feature_id": f"e{k}-{j}", "feature_schema_id": f"s-{etype}", "name": etype, "value": etype,
                    "annotation_kind": "TextEntity", "classifications": [],
                    "location": {"start": start, "end": start + len(token) - 1, "token": token}}
                   for j, (etype, start, token) in enumerate(spans)]
        return text, _label(k, {"objects": objects})
    text = " ".join(words)
    if model_type == "text_multi_classification":
        answers = [{"feature_id": f"a{k}-{t}", "feature_schema_id": f"s-{t}", "name": t, "value": t,
                    "classifications": []} for t in sorted(rng.sample(TOPICS, rng.randint(0, 3)))]
        return text, _label(k, {"classifications": [{"feature_id": f"q{k}", "feature_schema_id": "s-q",
                                                     "name": CHECKLIST, "value": CHECKLIST,
                                                     "checklist_answers": answers}]})
    cls = CLASSES[k % len(CLASSES)]
    answer = {"feature_id": f"f{k}", "feature_schema_id": f"s-{cls}", "name": cls, "value": cls, "classifications": []}
    return text, _label(k, {"classifications": [{"feature_id": f"q{k}", "feature_schema_id": "s-q", "name": QUESTION,
                                                 "value": QUESTION, "radio_answer": answer}]})


def export_lines(model_type: str, model_run_id: str, n: int, seed: int = 0) -> Any:
    """The export's N lines, as lbtrain.datasets.common.export_v2_row shapes a row. Every 50th row has
    no split (unassigned: predict-only), every 97th no label (predict-only); ids are unique."""
    rng = random.Random(seed)
    pool = [(json.dumps(text), json.dumps(labels)) for text, labels in
            (variant(model_type, k, rng) for k in range(VARIANTS))]
    run = json.dumps(model_run_id)
    for i in range(n):
        text, labels = pool[rng.randrange(VARIANTS)]
        split = "UNASSIGNED" if i % 50 == 49 else SPLITS[i % 7]
        yield LINE % (i, i, i, text, run, run, split, "[]" if i % 97 == 96 else labels)


def write_export(labelbox_dir: Path, model_run_id: str, n: int, model_type: str = MODEL_TYPE, seed: int = 0) -> Path:
    path = labelbox_dir / "model_runs" / model_run_id / "export.ndjson"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        lines = export_lines(model_type, model_run_id, n, seed)
        while chunk := "".join(line for _, line in zip(range(10_000), lines, strict=False)):
            out.write(chunk)
    tmp.rename(path)
    return path


def floor_seconds(path: Path) -> tuple[float, float]:
    """Reading and json-parsing the export alone, a line at a time (what any ETL must at least do):
    (wall seconds, CPU seconds)."""
    started, cpu = time.monotonic(), time.process_time()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            json.loads(line)
    return time.monotonic() - started, time.process_time() - cpu


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(root: Path, n: int, model_type: str = MODEL_TYPE) -> dict[str, Any]:
    model_run_id = f"bench-etl-{model_type.replace('_', '-')}-{n}"
    export = write_export(root / "labelbox", model_run_id, n, model_type)
    config = configmod.Config(artifact_root=str(root / "artifacts"), labelbox_dir=str(root / "labelbox"),
                              project="bench", deployment_name="bench")
    env = {**os.environ, **configmod.to_env(config), "PYTHONUNBUFFERED": "1"}
    run_id = f"etl-{n}-{int(time.time() * 1000) % 10**9}"
    cpu_before = children_cpu_seconds()  # the job is a child the benchmark waits for: its CPU time
    outputs, seconds, rss = quality.run_stage(env, run_id, "etl", model_run_id, model_type, root, {}, {})
    cpu = children_cpu_seconds() - cpu_before
    floor, floor_cpu = floor_seconds(export)
    return {
        "rows": n,
        "seconds": round(seconds, 2),
        "rows_per_s": round(n / seconds),
        "peak_rss_mib": round(rss, 1),
        "floor_seconds": round(floor, 2),
        "floor_rows_per_s": round(n / floor),
        "ratio_to_floor": round(seconds / floor, 2),
        # CPU time: what a loaded machine moves least (the wall figures wait for the CPU too)
        "cpu_seconds": round(cpu, 2),
        "rows_per_cpu_s": round(n / cpu),
        "floor_rows_per_cpu_s": round(n / floor_cpu),
        "cpu_ratio_to_floor": round(cpu / floor_cpu, 2),
        "export_mib": round(export.stat().st_size / 2**20, 1),
        "examples": outputs["metrics"].get("examples") if "metrics" in outputs else outputs.get("examples"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(str(n) for n in DEFAULT_ROWS),
                        help="comma-separated row counts (default 10000,100000,1000000)")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default=MODEL_TYPE,
                        help=f"the synthetic export's model type (default {MODEL_TYPE})")
    parser.add_argument("--quick", action="store_true",
                        help="10000,50000 rows (and 1000000 for text_single_classification)")
    parser.add_argument("--keep", metavar="DIR",
                        help="work in DIR and keep it (exports already there are reused)")
    args = parser.parse_args(argv)
    quick = QUICK_ROWS.get(args.model_type, QUICK_ROWS_OTHER)
    sizes = sorted(quick if args.quick else (int(s) for s in args.rows.split(",") if s.strip()))
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lbtrain-bench-etl-"))
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(f"etl of a synthetic {args.model_type} export; {os.cpu_count()} CPUs, load average {load:.2f}")
    print(f"{'rows':>9} {'seconds':>8} {'rows/s':>8} {'peak MiB':>9} {'floor s':>8} {'floor rows/s':>12} "
          f"{'x floor':>8} {'rows/cpu-s':>10} {'floor':>8} {'x floor':>8} {'export MiB':>10}")
    results = []
    try:
        for n in sizes:
            r = measure(root, n, args.model_type)
            results.append(r)
            print(f"{r['rows']:>9} {r['seconds']:>8.2f} {r['rows_per_s']:>8} {r['peak_rss_mib']:>9.1f} "
                  f"{r['floor_seconds']:>8.2f} {r['floor_rows_per_s']:>12} {r['ratio_to_floor']:>8.2f} "
                  f"{r['rows_per_cpu_s']:>10} {r['floor_rows_per_cpu_s']:>8} {r['cpu_ratio_to_floor']:>8.2f} "
                  f"{r['export_mib']:>10.1f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    last = results[-1]
    print(json.dumps({"model_type": args.model_type, "rows": last["rows"], "rows_per_s": last["rows_per_s"],
                      "peak_rss_mib": last["peak_rss_mib"], "rows_per_cpu_s": last["rows_per_cpu_s"],
                      "floor_rows_per_s": last["floor_rows_per_s"], "load_average": round(load, 2),
                      "per_n": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
