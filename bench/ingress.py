#!/usr/bin/env python
"""Ingress throughput and latency against a floor handler, on the Pub/Sub and Firestore emulators.

The ingress is started as its image starts it (services/ingress/Dockerfile: gunicorn, 1 worker, 8 threads,
`services.ingress.main:app`) with the environment the local stack gives it; the floor
(bench/ingress_floor.py: one HMAC check, one transaction, one waited publish) under the same gunicorn
settings, on the same emulators. C client threads, each with one keep-alive connection, send
pre-signed deliveries:

- new:    signed `POST /model_run` webhooks, fresh model run and delivery ids;
- dup:    half fresh deliveries, half redeliveries of them (same X-Labelbox-Id, sent a little later);
- label:  signed `POST /webhooks/labelbox` LABEL_CREATED deliveries, distinct label ids, for a rule whose
          min_labels is out of reach (no run is held);
- floor / label_floor: the same shapes against the floor handler;
- label_floor_sharded: the label floor with its count in 8 shards and the exact sum read back, as a
          count on Firestore must be kept under a burst (what lbtrain's label path itself costs is its
          ratio to this one; the issue's ratio is to label_floor).

Then it checks from Firestore and the REST API that every accepted delivery made exactly one run (or
one count), and profiles one request of each kind in-process (Firestore RPCs, publishes, time split).
The last line is one JSON object. See bench/README.md.

    .venv/bin/python bench/ingress.py [--requests 1000] [--concurrency 16] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/ingress.py` from anywhere
    sys.path.insert(0, str(REPO))

from lbtrain import emulators, signature  # noqa: E402
from lbtrain.client import Client  # noqa: E402

MODEL_TYPE = "text_single_classification"
PROJECTS: list[str] = []  # Firestore projects this run wrote (cleared at the end on reused emulators)
# The image's command (services/ingress/Dockerfile CMD), bound to loopback.
GUNICORN_ARGS = ["--workers", "1", "--threads", "8", "--timeout", "0"]


# -- servers -------------------------------------------------------------------------------------

class Gunicorn:
    def __init__(self, name: str, app: str, env: dict[str, str], root: Path, extra: list[str] | None = None):
        self.name, self.port = name, emulators.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        gunicorn = Path(sys.executable).with_name("gunicorn")
        if not gunicorn.exists():
            raise SystemExit("gunicorn is not installed in this environment (the services extra)")
        self.log_path = root / f"{name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept open by the child
        self.proc = subprocess.Popen([str(gunicorn), "--bind", f"127.0.0.1:{self.port}", *GUNICORN_ARGS,
                                      *(extra or []), app], env=env, cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.log_path}\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", path)
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer within {timeout:.0f}s")

    def cpu_seconds(self) -> float:
        """User + system CPU of the gunicorn master and its workers so far (Linux /proc; 0 elsewhere)."""
        total = 0.0
        try:
            pids = [self.proc.pid] + [int(c) for c in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
                                      .read_text().split()]
            for pid in pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def create_topics(project: str, deployment: str) -> None:
    """The deployment's topics (no subscriptions: nothing downstream runs) and the floor's."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    from lbtrain.adapters.pubsub_bus import topology
    from lbtrain.api.push import all_stages

    publisher = pubsub_v1.PublisherClient()
    for topic_id in [s.topic_id for s in topology(deployment, all_stages())] + [f"{deployment}-floor"]:
        try:
            publisher.create_topic(name=publisher.topic_path(project, topic_id))
        except gexc.AlreadyExists:
            pass


# -- load ----------------------------------------------------------------------------------------

Request = tuple[str, bytes, dict[str, str], str]  # path, body, headers, tag (what the check needs)


def signed(path: str, body: dict[str, Any], secret: str, delivery: str, event: str = "", tag: str = "") -> Request:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **signature.headers(secret, raw), "X-Labelbox-Id": delivery}
    if event:
        headers["X-Labelbox-Event"] = event
    return path, raw, headers, tag


def drive(port: int, requests: list[Request], concurrency: int) -> dict[str, Any]:
    """Send every request over `concurrency` keep-alive connections; latencies, statuses, answers."""
    work: queue.SimpleQueue[tuple[int, Request] | None] = queue.SimpleQueue()
    for item in enumerate(requests):
        work.put(item)
    for _ in range(concurrency):
        work.put(None)
    latencies = [0.0] * len(requests)
    statuses: list[int] = [0] * len(requests)
    answers: list[Any] = [None] * len(requests)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while (item := work.get()) is not None:
            i, (path, body, headers, _) = item
            t0 = time.perf_counter()
            for attempt in range(2):  # a keep-alive connection the server closed: reconnect once
                try:
                    conn.request("POST", path, body, headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (ConnectionError, http.client.HTTPException, OSError):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    if attempt:
                        statuses[i], data = -1, b""
                        resp = None
            latencies[i] = time.perf_counter() - t0
            if resp is not None:
                statuses[i] = resp.status
                try:
                    answers[i] = json.loads(data) if data else None
                except json.JSONDecodeError:
                    answers[i] = data[:200].decode(errors="replace")
        conn.close()

    threads = [threading.Thread(target=worker, name=f"client-{n}", daemon=True) for n in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"latencies": latencies, "statuses": statuses, "answers": answers, "wall": wall}


def pct(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(q * len(ordered) + 0.5)) - 1))] if ordered else 0.0


def summary(name: str, result: dict[str, Any]) -> dict[str, Any]:
    lat = [x * 1000 for x in result["latencies"]]
    n = len(lat)
    return {"scenario": name, "requests": n, "rps": round(n / result["wall"], 1) if result["wall"] else 0.0,
            "p50_ms": round(pct(lat, 0.50), 1), "p90_ms": round(pct(lat, 0.90), 1),
            "p99_ms": round(pct(lat, 0.99), 1), "max_ms": round(max(lat, default=0.0), 1),
            "statuses": {str(k): v for k, v in sorted(Counter(result["statuses"]).items())}}


# -- scenarios -----------------------------------------------------------------------------------

def new_runs(n: int, secret: str, labelbox_dir: Path, prefix: str) -> list[Request]:
    """Fresh model runs (their file-backed Labelbox dirs exist: the ingress reports EXPORTING_DATA)."""
    out = []
    for _ in range(n):
        mr = f"{prefix}{uuid.uuid4().hex[:12]}"
        if labelbox_dir is not None:
            (labelbox_dir / "model_runs" / mr).mkdir(parents=True)
        out.append(signed("/model_run", {"modelId": "m1", "modelRunId": mr, "modelType": MODEL_TYPE}, secret,
                          f"d-{uuid.uuid4().hex}", tag=mr))
    return out


def with_redeliveries(fresh: list[Request], lag: int) -> list[Request]:
    """Each fresh delivery, and `lag` requests later the same delivery again (same id, same body)."""
    out: list[Request] = []
    for i, req in enumerate(fresh):
        out.append(req)
        if i >= lag:
            out.append(fresh[i - lag])
    out.extend(fresh[max(0, len(fresh) - lag):])
    return out


def labels(n: int, secret: str, project_id: str, path: str = "/webhooks/labelbox") -> list[Request]:
    out = []
    for _ in range(n):
        label_id = f"lbl{uuid.uuid4().hex[:20]}"
        body = {"id": label_id, "label": "{}", "dataRow": {"id": f"dr{uuid.uuid4().hex[:20]}"},
                "project": {"id": project_id, "name": "bench"}, "createdAt": "2026-11-20T10:15:02.123Z"}
        out.append(signed(path, body, secret, f"d-{uuid.uuid4().hex}", "LABEL_CREATED", label_id))
    return out


# -- checks --------------------------------------------------------------------------------------

def runs_by_model_run(project: str) -> tuple[Counter[str], dict[str, set[str]]]:
    from google.cloud import firestore

    db = firestore.Client(project=project)
    counts: Counter[str] = Counter()
    ids: dict[str, set[str]] = {}
    for snap in db.collection("runs").select(["model_run_id"]).stream():
        mr = snap.get("model_run_id")
        counts[mr] += 1
        ids.setdefault(mr, set()).add(snap.id)
    return counts, ids


def check_runs(sent: list[Request], result: dict[str, Any], counts: Counter[str], ids: dict[str, set[str]]
               ) -> dict[str, int]:
    """Per model run sent: an accepted (200) delivery without its run is lost; more than one run is extra;
    a 200 whose run_id is not the model run's run is a wrong answer."""
    accepted: dict[str, list[Any]] = {}
    for (_, _, _, mr), status, answer in zip(sent, result["statuses"], result["answers"], strict=True):
        if status == 200:
            accepted.setdefault(mr, []).append(answer)
    lost = sum(1 for mr in accepted if counts.get(mr, 0) == 0)
    extra = sum(max(0, counts.get(mr, 0) - 1) for mr in {r[3] for r in sent})
    wrong = sum(1 for mr, answers in accepted.items() for a in answers
                if not isinstance(a, dict) or a.get("run_id") not in ids.get(mr, set()))
    created = sum(1 for answers in accepted.values() for a in answers if isinstance(a, dict) and a.get("created"))
    return {"accepted": sum(len(a) for a in accepted.values()), "created": created, "lost": lost, "extra_runs": extra,
            "wrong_answers": wrong}


def floor_docs(project: str, collection: str) -> int:
    from google.cloud import firestore

    return sum(1 for _ in firestore.Client(project=project).collection(collection).select([]).stream())


def floor_count(project: str, project_id: str) -> int:
    from google.cloud import firestore

    snap = firestore.Client(project=project).collection("floor-counters").document(project_id).get()
    return int(snap.get("count")) if snap.exists else 0


def floor_sharded_count(project: str, project_id: str) -> int:
    from google.cloud import firestore

    shards = firestore.Client(project=project).collection("floor-sharded").document(project_id).collection("shards")
    return sum(int(s.get("count") or 0) for s in shards.stream())


# -- profile: the real ingress in-process, once per kind, with counting wrappers ---------------------

class Probe:
    """Counts Firestore RPCs (at the GAPIC client) and Pub/Sub publishes, and times named sections."""

    RPCS = ("begin_transaction", "commit", "rollback", "batch_get_documents", "run_query", "run_aggregation_query",
            "get_document")
    STREAMS = ("batch_get_documents", "run_query", "run_aggregation_query")  # server streams

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self._undo: list[Callable[[], None]] = []
        self.order: list[str] = []  # labels in the order they were wrapped (parents before "of which")
        self.covered = 0.0  # seconds inside an outermost timed section (the rest: Flask, JSON, logging)
        self._depth = threading.local()

    def wrap(self, owner: Any, attr: str, label: str, stream: bool = False) -> None:
        original = getattr(owner, attr)
        probe = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            depth = getattr(probe._depth, "n", 0)
            probe._depth.n = depth + 1
            try:
                out = original(*args, **kwargs)
                if stream:  # a server stream: the time is in its consumption
                    out = iter(list(out))
                return out
            finally:
                probe._depth.n = depth
                probe.calls[label] += 1
                probe.seconds[label] += time.perf_counter() - t0
                if depth == 0:
                    probe.covered += time.perf_counter() - t0

        self.order.append(label)
        had = attr in vars(owner)  # a class's or module's own attribute; else an instance's bound method
        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original) if had else delattr(owner, attr))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    def reset(self) -> None:
        self.covered = 0.0
        self.calls.clear()
        self.seconds.clear()


@contextmanager
def probed(deps: Any) -> Iterator[Probe]:
    from google.cloud.firestore_v1.services.firestore import client as gapic

    from lbtrain import intake, reporting
    from lbtrain import signature as sig

    probe = Probe()
    for rpc in Probe.RPCS:
        probe.wrap(gapic.FirestoreClient, rpc, f"firestore.{rpc}", stream=rpc in Probe.STREAMS)
    probe.wrap(sig, "verify", "signature check")
    probe.wrap(deps.store, "create_run", "create_run transaction")
    probe.wrap(reporting, "report_recorded", "Labelbox status report (its history entry is in the create)")
    probe.wrap(reporting, "record_history", "  of which status history transaction (a failed send only)")
    probe.wrap(deps.labelbox, "update_status", "  of which Labelbox update_status")
    probe.wrap(deps.bus, "publish", "pubsub.publish (waited)")
    probe.wrap(intake, "redrive_pending", "redrive_pending (get_run, get_step; the publish above)")
    probe.wrap(deps.triggers, "record_label_event", "record_label_event")
    probe.wrap(deps.triggers, "pending", "  of which pending-count query")
    try:
        yield probe
    finally:
        probe.undo()


def profile(hosts: dict[str, str], root: Path, n: int) -> dict[str, Any]:
    """The ingress app in this process (Flask test client: no HTTP server), n requests of each kind
    sent one at a time; per request: RPC counts, publishes and the time split."""
    from lbtrain.api.apps import ingress_app
    from lbtrain.config import Config
    from lbtrain.deps import Deps

    project, deployment = f"ibp-{uuid.uuid4().hex[:8]}", f"p{uuid.uuid4().hex[:6]}"
    PROJECTS.append(project)
    secret, token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    cfg = Config(project=project, deployment_name=deployment, labelbox_webhook_secret=secret, api_token=token,
                 artifact_root=str(root / "profile-artifacts"), labelbox_dir=str(root / "profile-labelbox"),
                 state_dir=str(root / "profile-state"), pubsub_emulator_host=hosts["PUBSUB_EMULATOR_HOST"],
                 firestore_emulator_host=hosts["FIRESTORE_EMULATOR_HOST"])
    create_topics(project, deployment)
    deps = Deps(cfg)
    client = ingress_app(deps).test_client()
    rule_project = f"prj{uuid.uuid4().hex[:12]}"
    status = client.put(f"/triggers/{rule_project}", json={"model_type": MODEL_TYPE, "model_id": "m1",
                                                           "min_labels": 1_000_000},
                        headers={"Authorization": f"Bearer {token}"}).status_code
    assert status == 200, status
    warm = new_runs(1, secret, Path(cfg.labelbox_dir), "pw") + labels(1, secret, rule_project)
    kinds = {"new run": new_runs(n, secret, Path(cfg.labelbox_dir), "pn"),
             "redelivery": None, "label": labels(n, secret, rule_project)}
    kinds["redelivery"] = kinds["new run"]  # the same deliveries again, after they were accepted
    for path, body, headers, _ in warm:
        client.post(path, data=body, headers=headers)
    out: dict[str, Any] = {}
    with probed(deps) as probe:
        for kind, reqs in kinds.items():
            probe.reset()
            t0 = time.perf_counter()
            codes: Counter[int] = Counter()
            for path, body, headers, _ in reqs:
                codes[client.post(path, data=body, headers=headers).status_code] += 1
            total = time.perf_counter() - t0
            per = {k: round(probe.calls[k] / len(reqs), 2) for k in probe.order if probe.calls[k]}
            ms = {k: round(1000 * probe.seconds[k] / len(reqs), 2) for k in probe.order if probe.calls[k]}
            out[kind] = {"requests": len(reqs), "statuses": {str(k): v for k, v in codes.items()},
                         "ms_per_request": round(1000 * total / len(reqs), 2), "calls_per_request": per,
                         "ms_split": ms, "ms_other": round(1000 * (total - probe.covered) / len(reqs), 2)}
    return out


def print_profile(prof: dict[str, Any]) -> None:
    print("\nwhere the time goes (ingress in-process, one request at a time, per request):")
    for kind, p in prof.items():
        rpcs = {k.split(".", 1)[1]: v for k, v in p["calls_per_request"].items() if k.startswith("firestore.")}
        publishes = p["calls_per_request"].get("pubsub.publish (waited)", 0)
        print(f"  {kind}: {p['ms_per_request']} ms, statuses {p['statuses']}; Firestore RPCs {rpcs} "
              f"(= {round(sum(rpcs.values()), 2)}), publishes {publishes}")
        for label, ms in p["ms_split"].items():
            if not label.startswith("firestore."):
                print(f"      {label:<40} {ms:>7.2f} ms  ({p['calls_per_request'][label]}x)")
        print(f"      {'other (Flask, JSON, logging, test client)':<40} {p['ms_other']:>7.2f} ms")
        fs = {k.split(".", 1)[1]: v for k, v in p["ms_split"].items() if k.startswith("firestore.")}
        print(f"      Firestore RPC time {round(sum(fs.values()), 2)} ms: {fs}")


# -- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="requests per scenario (default 1000)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="200 requests per scenario, 10 per profiled kind")
    p.add_argument("--profile-requests", type=int, default=30, help="requests per kind in the in-process profile")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--json", action="store_true", help="only the JSON line")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (gunicorn logs, emulator logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.profile_requests = min(args.requests, 200), min(args.profile_requests, 10)
    n, conc = max(2, args.requests), args.concurrency
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    root = Path(tempfile.mkdtemp(prefix="lbtrain-ingress-bench-"))
    owned: list[emulators.Emulator] = []
    servers: list[Gunicorn] = []
    try:
        hosts = emulators.hosts_starting_missing(root / "logs", owned)
        project, deployment = f"ib-{uuid.uuid4().hex[:8]}", f"i{uuid.uuid4().hex[:6]}"
        PROJECTS.append(project)
        secret, token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        labelbox_dir = root / "labelbox"
        (labelbox_dir / "model_runs").mkdir(parents=True)
        env = {**os.environ, **hosts, "GOOGLE_CLOUD_PROJECT": project, "DEPLOYMENT_NAME": deployment,
               "LABELBOX_WEBHOOK_SECRET": secret, "API_TOKEN": token, "ARTIFACT_ROOT": str(root / "artifacts"),
               "LABELBOX_DIR": str(labelbox_dir), "LBTRAIN_STATE_DIR": str(root / "state"),
               "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
        create_topics(project, deployment)
        ingress = Gunicorn("ingress", "services.ingress.main:app", env, root)
        floor = Gunicorn("floor", "ingress_floor:app", env, root, ["--pythonpath", str(REPO / "bench")])
        servers += [ingress, floor]
        ingress.wait("/healthz")
        floor.wait("/")
        api = Client(ingress.url, token=token, retries=0, timeout=30)
        rule_project = f"prj{uuid.uuid4().hex[:12]}"
        api.set_trigger(rule_project, {"model_type": MODEL_TYPE, "model_id": "m1", "min_labels": 1_000_000})
        floor_project, sharded_project = f"prj{uuid.uuid4().hex[:12]}", f"prj{uuid.uuid4().hex[:12]}"

        # Warm-up (unmeasured): first gRPC channels, lazy imports, in both servers.
        warm = max(conc, 16)
        drive(ingress.port, new_runs(warm, secret, labelbox_dir, "w"), conc)
        drive(ingress.port, labels(warm, secret, f"prj{uuid.uuid4().hex[:12]}"), conc)
        drive(floor.port, new_runs(warm, secret, None, "w"), conc)  # type: ignore[arg-type]
        drive(floor.port, labels(warm, secret, f"prj{uuid.uuid4().hex[:12]}"), conc)

        say(f"ingress bench: {n} requests per scenario, concurrency {conc}, gunicorn {' '.join(GUNICORN_ARGS)}; "
            f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        sent: dict[str, list[Request]] = {}
        results: dict[str, dict[str, Any]] = {}
        plan = [("floor", floor, lambda: new_runs(n, secret, None, "f")),  # type: ignore[arg-type]
                ("new", ingress, lambda: new_runs(n, secret, labelbox_dir, "n")),
                ("dup", ingress, lambda: with_redeliveries(new_runs(n // 2, secret, labelbox_dir, "r"), 2 * conc)),
                ("label_floor", floor, lambda: labels(n, secret, floor_project)),
                ("label_floor_sharded", floor, lambda: labels(n, secret, sharded_project,
                                                              "/webhooks/labelbox-sharded")),
                ("label", ingress, lambda: labels(n, secret, rule_project))]
        table = []
        for name, server, build in plan:
            sent[name] = build()
            cpu0 = server.cpu_seconds()
            results[name] = drive(server.port, sent[name], conc)
            table.append(summary(name, results[name]))
            s = table[-1]
            s["server_cpu_ms_per_request"] = round(1000 * (server.cpu_seconds() - cpu0) / len(sent[name]), 2)
            say(f"  {name:<12} {s['requests']:>5} req  {s['rps']:>7.1f} req/s  p50 {s['p50_ms']:>7.1f}  "
                f"p90 {s['p90_ms']:>7.1f}  p99 {s['p99_ms']:>7.1f}  max {s['max_ms']:>7.1f} ms  "
                f"server CPU {s['server_cpu_ms_per_request']:>5.2f} ms/req  {s['statuses']}")
        by = {s["scenario"]: s for s in table}

        # Correctness.
        counts, ids = runs_by_model_run(project)
        checks = {name: check_runs(sent[name], results[name], counts, ids) for name in ("new", "dup")}
        warm_runs = sum(1 for mr in counts if mr.startswith("w"))
        stray = sum(v for mr, v in counts.items() if mr not in {r[3] for k in ("new", "dup") for r in sent[k]}
                    and not mr.startswith("w"))
        rule = api.get_trigger(rule_project)
        label_ok = sum(1 for s in results["label"]["statuses"] if s == 200)
        checks["label"] = {"accepted": label_ok, "counted": rule["pending"], "lost": max(0, label_ok - rule["pending"]),
                           "extra": max(0, rule["pending"] - label_ok),
                           "outcomes": dict(Counter(a.get("outcome") for a in results["label"]["answers"]
                                                    if isinstance(a, dict)))}
        floor_ok = sum(1 for s in results["floor"]["statuses"] if s == 200)
        floor_n = floor_docs(project, "floor-deliveries") - warm
        checks["floor"] = {"accepted": floor_ok, "documents": floor_n, "lost": max(0, floor_ok - floor_n)}
        lf_ok = sum(1 for s in results["label_floor"]["statuses"] if s == 200)
        lf_n = floor_count(project, floor_project)
        checks["label_floor"] = {"accepted": lf_ok, "counted": lf_n, "lost": max(0, lf_ok - lf_n)}
        ls_ok = sum(1 for s in results["label_floor_sharded"]["statuses"] if s == 200)
        ls_n = floor_sharded_count(project, sharded_project)
        checks["label_floor_sharded"] = {"accepted": ls_ok, "counted": ls_n, "lost": max(0, ls_ok - ls_n)}
        dup_fresh = len({r[3] for r in sent["dup"]})
        checks["dup"]["runs"] = sum(counts.get(mr, 0) for mr in {r[3] for r in sent["dup"]})
        checks["dup"]["expected_runs"] = dup_fresh
        lost = sum(c["lost"] for c in checks.values())
        extra = checks["new"]["extra_runs"] + checks["dup"]["extra_runs"] + checks["label"]["extra"] + stray
        say("\ncorrectness:")
        for name, c in checks.items():
            say(f"  {name:<12} {c}")
        say(f"  runs not sent by a scenario (warm-up excluded): {stray}; warm-up runs: {warm_runs}")

        prof = None
        if not args.no_profile:
            prof = profile(hosts, root, args.profile_requests)
            if not args.json:
                print_profile(prof)

        def ratio(a: float, b: float) -> float | None:
            return round(a / b, 3) if b else None

        out = {"requests": n, "concurrency": conc, "cpus": os.cpu_count(),
               "new_rps": by["new"]["rps"], "new_p50_ms": by["new"]["p50_ms"], "new_p99_ms": by["new"]["p99_ms"],
               "floor_rps": by["floor"]["rps"], "floor_p50_ms": by["floor"]["p50_ms"],
               "floor_p99_ms": by["floor"]["p99_ms"],
               "dup_rps": by["dup"]["rps"], "dup_p99_ms": by["dup"]["p99_ms"],
               "label_rps": by["label"]["rps"], "label_p99_ms": by["label"]["p99_ms"],
               "label_floor_rps": by["label_floor"]["rps"], "label_floor_p99_ms": by["label_floor"]["p99_ms"],
               "new_vs_floor_rps": ratio(by["new"]["rps"], by["floor"]["rps"]),
               "new_vs_floor_p99": ratio(by["new"]["p99_ms"], by["floor"]["p99_ms"]),
               "label_vs_floor_rps": ratio(by["label"]["rps"], by["label_floor"]["rps"]),
               "label_floor_sharded_rps": by["label_floor_sharded"]["rps"],
               "label_vs_sharded_floor_rps": ratio(by["label"]["rps"], by["label_floor_sharded"]["rps"]),
               "new_cpu_ms": by["new"]["server_cpu_ms_per_request"],
               "floor_cpu_ms": by["floor"]["server_cpu_ms_per_request"],
               "label_cpu_ms": by["label"]["server_cpu_ms_per_request"],
               "label_floor_cpu_ms": by["label_floor"]["server_cpu_ms_per_request"],
               "non_200": sum(1 for r in results.values() for s in r["statuses"] if s != 200),
               "lost": lost, "extra": extra, "checks": checks, "scenarios": table}
        if prof is not None:
            out["profile"] = prof
        say(f"\nratios: new/floor rps {out['new_vs_floor_rps']}, new/floor p99 {out['new_vs_floor_p99']}, "
            f"label/label_floor rps {out['label_vs_floor_rps']}, label/label_floor_sharded rps "
            f"{out['label_vs_sharded_floor_rps']}; lost {lost}, extra {extra}")
        print(json.dumps(out), flush=True)
        return 0 if lost == 0 and extra == 0 else 1
    finally:
        for server in servers:
            server.stop()
        if not any(em.name == "firestore" for em in owned) and os.environ.get("FIRESTORE_EMULATOR_HOST"):
            for project_id in PROJECTS:  # reused emulator: remove this benchmark's documents
                try:
                    emulators.reset_firestore(os.environ["FIRESTORE_EMULATOR_HOST"], project_id)
                except OSError as exc:
                    print(f"could not clear Firestore project {project_id}: {exc}", file=sys.stderr)
        for em in owned:
            em.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
