#!/usr/bin/env python
"""Chaos benchmark: N runs on the local stack while the stack is killed and every message is duplicated.

`lbtrain dev` runs as a subprocess (all services in it, the no-op job module `lbtrain.noop_job`), on
Pub/Sub and Firestore emulators this script owns, so that killing the stack (SIGKILL: no clean-up,
no goodbye) loses nothing the emulators hold. While N runs go through it:
- every Model Run webhook is sent three times at once with the same delivery id (Labelbox's redelivery);
- every message published on any of the deployment's topics is published twice more (a storm
  subscriber pulls each original and re-publishes copies, as publisher retries and redeliveries do);
- the stack is killed at random moments and restarted on the same port a moment later.

A baseline phase runs the same N runs first without kills or copies. Afterwards it counts, from the
API, Firestore and the local job dirs: runs lost (not SUCCEEDED), runs per model run, job executions
per step attempt (duplicates), jobs the runs do not know (orphans), retried steps, 5xx answers, and
the time the recovery added (chaos phase minus baseline). See bench/README.md.

    .venv/bin/python bench/chaos.py [--runs 20] [--kills 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lbtrain import emulators
from lbtrain.client import ApiError, Client

MODEL_TYPE = "text_single_classification"
EXPORT_ROW = {"data_row": {"id": "chaos-dr-1", "global_key": "chaos-1", "row_data": "hello"}, "experiments": {}}
COPY_ATTRIBUTE = "chaos_copy"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class Stack:
    """`lbtrain dev` as a subprocess that can be killed and started again with the same state."""

    def __init__(self, root: Path, env: dict[str, str], port: int):
        self.root, self.env, self.port = root, env, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"
        self.starts = 0
        self.down_seconds = 0.0

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.root / f"dev-{self.starts}.log", "wb")  # noqa: SIM115 - kept open by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbtrain.cli", "dev", "--port", str(self.port), "--reconcile-interval", "5"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lbtrain dev exited with {self.proc.returncode}: see {log.name}")
            try:
                status, _ = Client(self.url, retries=0, timeout=2).request("GET", "/healthz")
                if status == 200:
                    return
            except ApiError:
                time.sleep(0.2)
        raise RuntimeError(f"lbtrain dev did not answer within {timeout:.0f}s")

    def kill(self) -> None:
        """SIGKILL the stack process only: its jobs (own sessions) and the emulators live on."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


class Storm(threading.Thread):
    """Pulls every original message of the deployment's topics and publishes it twice more."""

    def __init__(self, project: str, deployment: str, copies: int = 2):
        super().__init__(name="storm", daemon=True)
        from google.cloud import pubsub_v1

        self.publisher, self.subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        self.project, self.deployment, self.copies = project, deployment, copies
        self.stop_event = threading.Event()
        self.published = Counter[str]()
        self.subscriptions: list[tuple[str, str]] = []

    def attach(self) -> None:
        """One pull subscription per topic of the deployment (after `lbtrain dev` created them)."""
        prefix = f"projects/{self.project}/topics/{self.deployment}-"
        for topic in self.publisher.list_topics(request={"project": f"projects/{self.project}"}):
            if not topic.name.startswith(prefix) or topic.name.endswith("-dead-letter"):
                continue
            sub = self.subscriber.subscription_path(self.project, f"chaos-{uuid.uuid4().hex[:8]}")
            self.subscriber.create_subscription(name=sub, topic=topic.name)
            self.subscriptions.append((sub, topic.name))

    def run(self) -> None:
        while not self.stop_event.is_set():
            for sub, topic in self.subscriptions:
                response = self.subscriber.pull(request={"subscription": sub, "max_messages": 50}, timeout=5)
                acks = []
                for received in response.received_messages:
                    acks.append(received.ack_id)
                    message = received.message
                    if message.attributes.get(COPY_ATTRIBUTE):
                        continue
                    attributes = {**dict(message.attributes), COPY_ATTRIBUTE: "1"}
                    for _ in range(self.copies):
                        self.publisher.publish(topic, message.data, **attributes).result(timeout=30)
                        self.published[topic.rsplit("-", 1)[-1]] += 1
                if acks:
                    self.subscriber.acknowledge(request={"subscription": sub, "ack_ids": acks})
            self.stop_event.wait(0.1)

    def detach(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        for sub, _ in self.subscriptions:
            self.subscriber.delete_subscription(request={"subscription": sub})


def model_run(labelbox_dir: Path) -> str:
    mr = f"chaos-{uuid.uuid4().hex[:10]}"
    d = labelbox_dir / "model_runs" / mr
    d.mkdir(parents=True)
    (d / "export.ndjson").write_text(json.dumps(EXPORT_ROW) + "\n")
    return mr


def deliver_three_times(url: str, secret: str, mr: str, answers: Counter[str], lock: threading.Lock) -> None:
    """The same delivery three times at once; each sender retries while the stack is down."""
    body = {"modelId": "m1", "modelRunId": mr, "modelType": MODEL_TYPE}
    delivery = f"delivery-{mr}"

    def send() -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, _ = Client(url, retries=0, timeout=10).send_webhook("/model_run", body, secret, delivery)
                with lock:
                    answers[str(status)] += 1
                return
            except ApiError as exc:
                outcome = str(exc.status) if exc.status else "unreachable (retried)"
                if not exc.status or exc.status >= 500:
                    outcome = "gave up" if time.monotonic() > deadline else outcome
                with lock:
                    answers[outcome] += 1
                if exc.status and exc.status < 500 or outcome == "gave up":
                    return
                time.sleep(0.5)

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def wait_all(api: Client, model_runs: list[str], timeout: float) -> dict[str, list[dict[str, Any]]]:
    """Every model run's runs once each has one that ended (or the timeout); tolerates a stack that is down."""
    deadline = time.monotonic() + timeout
    found: dict[str, list[dict[str, Any]]] = {}
    while time.monotonic() < deadline:
        try:
            found = {mr: api.list_runs(model_run_id=mr)["runs"] for mr in model_runs}
        except ApiError:
            time.sleep(0.5)
            continue
        if all(runs and all(r["status"] in TERMINAL for r in runs) for runs in found.values()):
            return found
        time.sleep(0.5)
    return found


def phase(stack: Stack, secret: str, labelbox_dir: Path, runs: int, kills: int, storm: Storm | None,
          timeout: float, rng: random.Random) -> dict[str, Any]:
    api = Client(stack.url, token=stack.env["API_TOKEN"], retries=0, timeout=10)
    model_runs = [model_run(labelbox_dir) for _ in range(runs)]
    answers: Counter[str] = Counter()
    started = time.monotonic()
    killer_done = threading.Event()

    def killer() -> None:
        for _ in range(kills):
            if killer_done.wait(rng.uniform(1.0, 4.0)):
                return
            stack.kill()
            down = time.monotonic()
            time.sleep(rng.uniform(0.2, 1.5))
            stack.start()
            stack.down_seconds += time.monotonic() - down

    kill_thread = threading.Thread(target=killer, name="killer", daemon=True)
    if kills:
        kill_thread.start()
    with ThreadPoolExecutor(max_workers=4) as pool:
        lock = threading.Lock()
        list(pool.map(lambda mr: deliver_three_times(stack.url, secret, mr, answers, lock), model_runs))
    found = wait_all(api, model_runs, timeout)
    killer_done.set()
    if kills:
        kill_thread.join()
    wall = time.monotonic() - started
    return {"model_runs": model_runs, "found": found, "answers": dict(answers), "wall_seconds": wall}


def job_report(artifacts: Path, found: dict[str, list[dict[str, Any]]], api: Client) -> dict[str, Any]:
    """Executions per step attempt from the no-op job's executions.log, and jobs no run knows of."""
    known: set[str] = set()
    retried = 0
    executions: Counter[str] = Counter()
    run_ids = {run["run_id"] for runs in found.values() for run in runs}
    for run_id in run_ids:
        for step in api.get_run(run_id).get("steps", []):
            retried += int(step.get("attempt", 1) > 1)
            for attempt in range(1, int(step.get("attempt", 1)) + 1):
                key = f"{run_id}/{step['stage']}/a{attempt}"
                known.add(key)
                log = artifacts / "runs" / key / "executions.log"
                if log.is_file():
                    executions[key] = len(log.read_text().splitlines())
    on_disk = {str(p.parent.relative_to(artifacts / "runs"))
               for p in (artifacts / "runs").glob("*/*/a*/executions.log")}
    ours = {key for key in on_disk if key.split("/", 1)[0] in run_ids}
    return {
        "step_attempts": len(known),
        "executions": sum(executions.values()),
        "duplicate_executions": sum(n - 1 for n in executions.values() if n > 1),
        "orphan_jobs": len(ours - known),  # a job for one of these runs at an attempt no step records
        "all_job_dirs": len(on_disk),
        "retried_steps": retried,
    }


def summarize(name: str, result: dict[str, Any], jobs: dict[str, Any]) -> dict[str, Any]:
    found = result["found"]
    statuses = Counter(r["status"] for runs in found.values() for r in runs)
    per_mr = Counter(len(runs) for runs in found.values())
    lost = sum(1 for mr in result["model_runs"] if not any(r["status"] == "SUCCEEDED" for r in found.get(mr, [])))
    return {"phase": name, "runs": len(result["model_runs"]), "statuses": dict(statuses), "runs_lost": lost,
            "runs_per_model_run": {str(k): v for k, v in sorted(per_mr.items())},
            "webhook_answers": result["answers"],
            "answers_5xx": sum(v for k, v in result["answers"].items() if k.isdigit() and int(k) >= 500),
            "wall_seconds": round(result["wall_seconds"], 1), **jobs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--kills", type=int, default=4, help="SIGKILLs of the stack during the chaos phase")
    p.add_argument("--copies", type=int, default=2, help="extra copies of every published message")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, job dirs)")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="lbtrain-chaos-"))
    owned: list[emulators.Emulator] = []
    stack: Stack | None = None
    storm: Storm | None = None
    try:
        hosts = emulators.hosts_starting_missing(root / "logs", owned)
        project, deployment = f"chaos-{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:6]}"
        secret = secrets.token_urlsafe(24)
        env = {**os.environ, **hosts, "GOOGLE_CLOUD_PROJECT": project, "DEPLOYMENT_NAME": deployment,
               "LBTRAIN_STATE_DIR": str(root / "state"), "ARTIFACT_ROOT": str(root / "artifacts"),
               "LABELBOX_DIR": str(root / "labelbox"), "LBTRAIN_JOB_MODULE": "lbtrain.noop_job",
               "API_TOKEN": secrets.token_urlsafe(24), "LABELBOX_WEBHOOK_SECRET": secret,
               "LBTRAIN_STALE_AFTER_SECONDS": "30", "PYTHONUNBUFFERED": "1"}
        stack = Stack(root, env, emulators.free_port())
        stack.start()
        api = Client(stack.url, token=env["API_TOKEN"], retries=2, timeout=10)
        labelbox_dir = root / "labelbox"
        report = []
        if not args.no_baseline:
            base = phase(stack, secret, labelbox_dir, args.runs, 0, None, args.timeout, rng)
            report.append(summarize("baseline", base, job_report(root / "artifacts", base["found"], api)))
        storm = Storm(project, deployment, args.copies)
        storm.attach()
        storm.start()
        chaos = phase(stack, secret, labelbox_dir, args.runs, args.kills, storm, args.timeout, rng)
        storm.detach()
        chaos_summary = summarize("chaos", chaos, job_report(root / "artifacts", chaos["found"], api))
        chaos_summary.update({"kills": stack.starts - 1, "down_seconds": round(stack.down_seconds, 1),
                              "copies_published": dict(storm.published)})
        report.append(chaos_summary)
        storm = None
        if len(report) == 2:
            chaos_summary["time_added_seconds"] = round(chaos_summary["wall_seconds"] - report[0]["wall_seconds"], 1)
        if args.json:
            print(json.dumps({"runs": args.runs, "phases": report}))
        else:
            for r in report:
                print(f"{r['phase']:>8}: {r['runs']} runs, {r['statuses']}, lost {r['runs_lost']}, "
                      f"runs per model run {r['runs_per_model_run']}, step attempts {r['step_attempts']}, "
                      f"executions {r['executions']} (duplicates {r['duplicate_executions']}, orphans "
                      f"{r['orphan_jobs']}), retried steps {r['retried_steps']}, webhook answers "
                      f"{r['webhook_answers']}, wall {r['wall_seconds']} s")
            print(f"   chaos: {chaos_summary['kills']} kills, {chaos_summary['down_seconds']} s down, copies "
                  f"{chaos_summary['copies_published']}, time added {chaos_summary.get('time_added_seconds')} s")
        lost = sum(r["runs_lost"] + r["duplicate_executions"] + r["orphan_jobs"] for r in report)
        return 0 if lost == 0 else 1
    finally:
        if storm is not None:
            storm.detach()
        if stack is not None:
            stack.stop()
        for em in owned:
            em.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
