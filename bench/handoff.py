#!/usr/bin/env python
"""Stage hand-off benchmark: how long the event-driven chain takes to go from one stage's job
ending to the next stage's job being launched, on the local stack.

Runs the whole local stack in this process (`lbtrain.devstack.DevStack`: Pub/Sub and Firestore
emulators, every service on one port, LocalBackend jobs), starts N runs of the no-op job module
(`lbtrain.noop_job`) through the REST API, C at a time, waits for them, and prints numbers.
See bench/README.md for what is measured and how.

    .venv/bin/python bench/handoff.py [--runs 68] [--concurrency 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/handoff_floor.py

from lbtrain.client import Client  # noqa: E402
from lbtrain.config import Config
from lbtrain.devstack import DevStack
from lbtrain.emulators import free_port

MODEL_TYPE = "text_single_classification"
EXPORT_ROW = {"data_row": {"id": "bench-dr-1", "global_key": "bench-1", "row_data": "hello world"},
              "experiments": {}}


class RequestCounter:
    """WSGI middleware: counts requests by (path kind, status) — push deliveries included."""

    def __init__(self, app: Any):
        self.app = app
        self.counts: Counter[tuple[str, int]] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        kind = path if path.startswith("/push/") else ("/runs/<id>" if path.startswith("/runs/") else path)

        def counting_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            with self.lock:
                self.counts[(kind, int(status.split()[0]))] += 1
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return self.app(environ, counting_start_response)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def iso_to_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def event_ack_time(job_dir: Path, job_name: str) -> float | None:
    """When the runner's publish of the JobEvent was acknowledged: the runner logs
    `job <name> <STATE>` (JSON line, ms precision) right after `publish()` returned."""
    log = job_dir / "runner.log"
    if not log.exists():
        return None
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and str(entry.get("message", "")).startswith(f"job {job_name} ") \
                and entry.get("time"):
            return iso_to_epoch(entry["time"])
    return None


def measure_run(jobs_root: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per hand-off (stage i ended → stage i+1 launched) of a finished run."""
    steps = sorted(run.get("steps", []), key=lambda s: s["index"])
    out = []
    for prev, nxt in zip(steps, steps[1:], strict=False):
        if not (prev.get("job") and nxt.get("job")):
            continue
        prev_dir, next_dir = jobs_root / prev["job"]["id"], jobs_root / nxt["job"]["id"]
        ended_at = read_json(prev_dir / "state.json").get("ended_at")
        launched_at = (next_dir / "spec.json").stat().st_mtime_ns / 1e9
        if ended_at is None:
            continue
        acked = event_ack_time(prev_dir, prev["job"]["id"])
        out.append({
            "run_id": run["run_id"], "from": prev["stage"], "to": nxt["stage"],
            "latency_ms": (launched_at - ended_at) * 1000,
            "publish_ms": (acked - ended_at) * 1000 if acked is not None else None,
            "deliver_and_launch_ms": (launched_at - acked) * 1000 if acked is not None else None,
        })
    return out


def count_event_publishes(jobs_root: Path) -> int:
    """JobEvents the runners got acknowledged (one `job <name> <STATE>` line per success)."""
    n = 0
    for job_dir in jobs_root.iterdir():
        if event_ack_time(job_dir, job_dir.name) is not None:
            n += 1
    return n


def mtime_lag_ms(directory: Path, samples: int = 200) -> float:
    """How far a file's mtime can trail time.time() on this filesystem (coarse kernel clocks)."""
    probe = directory / ".mtime-probe"
    worst = 0.0
    for _ in range(samples):
        before = time.time_ns()
        probe.write_bytes(b"x")
        worst = max(worst, (before - probe.stat().st_mtime_ns) / 1e6)
    probe.unlink()
    return worst


def summarize(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values) if values else math.nan, "mean": sum(values) / len(values) if values else math.nan}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="lbtrain-bench-"))
    tag = uuid.uuid4().hex[:8]
    reuse_pubsub, reuse_firestore = os.environ.get("PUBSUB_EMULATOR_HOST", ""), os.environ.get(
        "FIRESTORE_EMULATOR_HOST", "")
    config = Config(
        deployment_name=f"bench{tag}", project=f"bench-{tag}",
        artifact_root=str(tmp / "artifacts"), labelbox_dir=str(tmp / "labelbox"), state_dir=str(tmp / "state"),
        job_module="lbtrain.noop_job", api_token=secrets.token_urlsafe(24),
        labelbox_webhook_secret=secrets.token_urlsafe(24),
        pubsub_emulator_host=reuse_pubsub, firestore_emulator_host=reuse_firestore,
        stale_after_seconds=3600.0,
    )
    stack = DevStack(config, port=free_port(), reconcile_interval=3600.0)
    result: dict[str, Any] = {}
    try:
        t_start = time.monotonic()
        stack.start()
        startup_s = time.monotonic() - t_start
        assert stack.server is not None and stack.deps is not None
        counter = RequestCounter(stack.server.app)
        stack.server.app = counter  # count every request the stack serves, push deliveries included
        cfg = stack.config
        client = Client(stack.url, token=cfg.api_token, timeout=60)
        jobs_root = Path(cfg.artifact_root).resolve() / "local-jobs"

        def one_run(i: int, measured: bool) -> dict[str, Any]:
            mr = f"bench-{tag}-{'m' if measured else 'w'}{i:04d}"
            d = Path(cfg.labelbox_dir) / "model_runs" / mr
            d.mkdir(parents=True, exist_ok=True)
            (d / "export.ndjson").write_text(json.dumps(EXPORT_ROW) + "\n", encoding="utf-8")
            started = client.start_run(MODEL_TYPE, mr)
            return client.wait(started["run_id"], timeout=args.timeout, interval=args.poll)

        for i in range(args.warmup):  # first gRPC channels, first imports: not measured
            one_run(i, measured=False)
        store, bus = stack.deps.store, stack.deps.bus
        store.writes, bus.published = 0, 0
        counter.counts.clear()
        warm_jobs = set(jobs_root.iterdir()) if jobs_root.exists() else set()

        t0 = time.time()
        pool = ThreadPoolExecutor(max_workers=args.concurrency)
        try:
            runs = list(pool.map(lambda i: one_run(i, True), range(args.runs)))
        finally:
            # On an interrupt, don't wait for runs in flight: stack.stop() below ends them, and the
            # workers' polls then fail and return.
            pool.shutdown(wait=False, cancel_futures=True)
        elapsed = time.time() - t0
        writes, published = store.writes, bus.published

        from handoff_floor import measure_floor

        floor = measure_floor(cfg.project, n=max(30, min(200, args.runs * 3)), concurrency=args.concurrency)
        handoffs = [h for run in runs for h in measure_run(jobs_root, run)]
        latencies = [h["latency_ms"] for h in handoffs]
        publish = [h["publish_ms"] for h in handoffs if h["publish_ms"] is not None]
        deliver = [h["deliver_and_launch_ms"] for h in handoffs if h["deliver_and_launch_ms"] is not None]
        measured_root = tmp / "measured-jobs"
        measured_root.mkdir()
        for job_dir in jobs_root.iterdir():  # job events of the measured runs only
            if job_dir not in warm_jobs:
                os.symlink(job_dir, measured_root / job_dir.name)
        events = count_event_publishes(measured_root)
        statuses = Counter(r["status"] for r in runs)
        push = {f"{kind} {status}": n for (kind, status), n in sorted(counter.counts.items())
                if kind.startswith("/push/")}
        push_total = sum(n for (kind, _), n in counter.counts.items() if kind.startswith("/push/"))
        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {
            "runs": args.runs, "concurrency": args.concurrency, "warmup_runs": args.warmup,
            "run_statuses": dict(statuses),
            "handoffs_measured": len(handoffs),
            "handoff_latency_ms": summarize(latencies),
            "floor_latency_ms": summarize(floor),
            "breakdown_ms": {"runner_publish (ended_at -> event acked)": summarize(publish),
                             "deliver_and_launch (event acked -> next job launched)": summarize(deliver)},
            "by_transition_p50_ms": {f"{a}->{b}": percentile([h["latency_ms"] for h in handoffs
                                                             if (h["from"], h["to"]) == (a, b)], 50)
                                     for a, b in sorted({(h["from"], h["to"]) for h in handoffs})},
            "elapsed_s": elapsed,
            "throughput_handoffs_per_s": len(handoffs) / elapsed if elapsed else math.nan,
            "throughput_runs_per_s": args.runs / elapsed if elapsed else math.nan,
            "firestore_writes_per_run": writes / args.runs,
            "pubsub_messages_per_run": {
                "services (step messages, in-process bus.published)": published / args.runs,
                "job events (runners, acked)": events / args.runs,
                "total": (published + events) / args.runs,
            },
            "push_deliveries_per_run": push_total / args.runs,
            "push_responses": push,
            "peak_rss_mb_stack_process": rss_self,
            "stack_startup_s": startup_s,
            "mtime_lag_ms_max": mtime_lag_ms(tmp),
            "emulators": "reused" if reuse_pubsub and reuse_firestore else "started by the benchmark",
        }
    finally:
        stack.stop()
        _end_leftover_runners(Path(config.artifact_root).resolve() / "local-jobs")
        if reuse_pubsub or reuse_firestore:
            _clean_reused(config, reuse_pubsub, reuse_firestore)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _end_leftover_runners(jobs_root: Path, grace: float = 3.0) -> None:
    """`DevStack.stop()` cancels running jobs and then stops the emulators, so a runner that was
    cancelled, or was publishing its JobEvent at that moment, keeps retrying the publish against
    the stopped emulator for minutes. End the ones this benchmark started (their job dir is in
    our temp dir), by pid, after a short grace."""
    if not jobs_root.exists():
        return

    def ours_alive() -> list[int]:
        pids = []
        for job_dir in jobs_root.iterdir():
            try:
                pid = json.loads((job_dir / "state.json").read_text(encoding="utf-8")).get("runner_pid")
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") if pid else ""
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if pid else "Z"
            except (OSError, ValueError):
                continue
            if str(job_dir) in cmdline and stat != "Z":
                pids.append(pid)
        return pids

    deadline = time.monotonic() + grace
    while ours_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in ours_alive():
        try:
            os.killpg(pid, signal.SIGKILL)  # each runner leads its own process group (job included)
        except ProcessLookupError:
            pass
    from lbtrain.adapters import local_backend

    for proc in list(local_backend._children):  # reap them: no zombies left in this process
        try:
            proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - best effort
            pass


def _clean_reused(config: Config, pubsub_host: str, firestore_host: str) -> None:
    """Emulators we did not start: remove this benchmark's topics and documents."""
    from lbtrain.api.push import all_stages
    from lbtrain.emulators import reset_firestore

    try:
        if pubsub_host:
            from lbtrain.adapters.pubsub_bus import delete_topology

            delete_topology(config.project, config.deployment_name, all_stages())
        if firestore_host:
            reset_firestore(firestore_host, config.project)
    except Exception as exc:  # noqa: BLE001 - cleanup is best effort
        print(f"cleanup of reused emulators failed: {exc}", file=sys.stderr)


def print_table(r: dict[str, Any]) -> None:
    lat = r["handoff_latency_ms"]
    print(f"runs: {r['runs']} (concurrency {r['concurrency']}, warm-up {r['warmup_runs']}), "
          f"statuses: {r['run_statuses']}")
    print(f"hand-offs measured: {r['handoffs_measured']}")
    print(f"hand-off latency ms: p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  "
          f"max {lat['max']:.1f}  (mean {lat['mean']:.1f})")
    fl = r["floor_latency_ms"]
    print(f"floor (two push hops, one transaction between; same emulators, same run) ms: p50 {fl['p50']:.1f}  "
          f"p90 {fl['p90']:.1f}  p99 {fl['p99']:.1f}; hand-off p50 / floor p50 = {lat['p50'] / fl['p50']:.2f}")
    for name, s in r["breakdown_ms"].items():
        print(f"  {name}: p50 {s['p50']:.1f}  p90 {s['p90']:.1f}  p99 {s['p99']:.1f}  max {s['max']:.1f}")
    print("  p50 by transition: " + ", ".join(f"{k} {v:.1f}" for k, v in r["by_transition_p50_ms"].items()))
    print(f"throughput: {r['throughput_handoffs_per_s']:.2f} hand-offs/s ({r['throughput_runs_per_s']:.3f} runs/s, "
          f"{r['elapsed_s']:.1f} s wall)")
    print(f"Firestore document writes per run: {r['firestore_writes_per_run']:.2f}")
    m = r["pubsub_messages_per_run"]
    print(f"Pub/Sub messages published per run: {m['total']:.2f} "
          f"(step messages by the services {m['services (step messages, in-process bus.published)']:.2f} + "
          f"job events by the runners {m['job events (runners, acked)']:.2f})")
    print(f"push deliveries per run: {r['push_deliveries_per_run']:.2f}  {r['push_responses']}")
    print(f"peak RSS of the stack process: {r['peak_rss_mb_stack_process']:.1f} MB")
    print(f"stack start-up: {r['stack_startup_s']:.1f} s ({r['emulators']}); "
          f"file mtime lag vs time.time(): ≤ {r['mtime_lag_ms_max']:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=68, help="measured runs (each gives 3 hand-offs; default 68 → 204)")
    p.add_argument("--concurrency", type=int, default=4, help="runs in flight at once (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between GET /runs/<id> while waiting")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (artifacts, job dirs, logs)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.concurrency < 1:
        p.error("--runs and --concurrency must be >= 1")

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through run_benchmark's finally: stack.stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = run_benchmark(args)
    except KeyboardInterrupt:
        print("interrupted; the stack was stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_table(result)
    print(json.dumps(summary_line(result)))  # the last line: what `make bench` collects
    return 0 if result["run_statuses"] == {"SUCCEEDED": args.runs} else 1


def summary_line(r: dict[str, Any]) -> dict[str, Any]:
    lat = r["handoff_latency_ms"]
    floor = r["floor_latency_ms"]
    return {"p50_ms": round(lat["p50"], 1), "p99_ms": round(lat["p99"], 1), "floor_p50_ms": round(floor["p50"], 1),
            "floor_p99_ms": round(floor["p99"], 1), "ratio_p50": round(lat["p50"] / floor["p50"], 2),
            "writes_per_run": round(r["firestore_writes_per_run"], 2),
            "messages_per_run": round(r["pubsub_messages_per_run"]["total"], 2),
            "handoffs": r["handoffs_measured"], "runs": r["runs"]}


if __name__ == "__main__":
    sys.exit(main())
