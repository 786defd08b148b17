"""`lbtrain demo`: the whole product on this machine, from nothing to a deployed model.

Builds a reference model run from public data for each model type, starts `lbtrain dev`
(emulators included) as a child process, triggers every run the way Labelbox does (a signed
`/model_run` webhook), shows each stage as it goes and prints the metrics. Then the stack stays up,
so the dashboard it advertised can be explored, until Ctrl-C (or SIGTERM); `exit_at_end` (`--exit`)
stops at once instead, for scripts and tests. Either way everything it started is stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lbtrain import config as configmod
from lbtrain.client import ApiError, Client
from lbtrain.devstack import read_local_secrets
from lbtrain.emulators import free_port


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _wait_ready(client: Client, proc: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`lbtrain dev` exited with {proc.returncode}; see {log_path}")
        try:
            client.request("GET", "/healthz")
            return
        except ApiError:
            time.sleep(0.5)
    raise RuntimeError(f"`lbtrain dev` not ready after {timeout:.0f}s; see {log_path}")


def _watch(api: Client, runs: dict[str, str], start: float, timeout: float) -> dict[str, dict]:
    """Poll every run until all have ended, printing each step transition as it happens."""
    seen: dict[tuple[str, str], str] = {}
    final: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    width = max(len(mt) for mt in runs.values())
    while len(final) < len(runs):
        for run_id, model_type in runs.items():
            if run_id in final:
                continue
            run = api.get_run(run_id)
            for step in run.get("steps", []):
                key = (run_id, f"{step['stage']} a{step['attempt']}")
                if seen.get(key) != step["state"] and step["state"] != "PENDING":
                    seen[key] = step["state"]
                    print(f"  [{time.monotonic() - start:6.1f}s] {model_type:<{width}}  {key[1]:<12} {step['state']}",
                          flush=True)
            if run["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                final[run_id] = run
        if len(final) < len(runs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still going after {timeout:.0f}s")
            time.sleep(1.0)
    return final


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stay_up(proc: subprocess.Popen, log_path: Path) -> bool:
    """Block until Ctrl-C / SIGTERM (True) or until `lbtrain dev` exits by itself (False)."""
    try:
        while proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        return True
    print(f"lbtrain demo: `lbtrain dev` exited with {proc.returncode}; see {log_path}", file=sys.stderr, flush=True)
    return False


LOOP_MODEL_TYPE = "text_single_classification"


def _labeling_loop(api: Client, secret: str, labelbox_dir: Path, limit: int | None, timeout: float) -> bool:
    """The labeling loop on a project: half its rows labeled, a retraining rule, label webhooks fire it,
    the run pre-labels the other half and orders the labeling queue (docs/architecture.md §4.5)."""
    import json

    from lbtrain import datasets
    from lbtrain.adapters.labelbox import FileLabelbox

    project_id = f"demo-project-{uuid.uuid4().hex[:8]}"
    datasets.build_project(LOOP_MODEL_TYPE, str(labelbox_dir), project_id, limit=min(limit or 1000, 1000))
    export = labelbox_dir / "projects" / project_id / "export.ndjson"
    rows = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines() if line.strip()]
    seed = len(rows) // 2
    for row in rows[seed:]:  # the half still to label
        row["projects"][project_id]["labels"] = []
    export.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    labels = 20
    api.set_trigger(project_id, {"model_type": LOOP_MODEL_TYPE, "model_id": "demo-model", "min_labels": labels})
    print(f"\nlbtrain demo: the labeling loop: project {project_id}, {seed} of {len(rows)} rows labeled, a rule "
          f"retrains {LOOP_MODEL_TYPE} every {labels} labels; sending {labels} signed label webhooks", flush=True)
    answer: dict = {}
    for row in rows[:labels]:
        label_id = row["projects"][project_id]["labels"][0]["id"]
        body = {"id": label_id, "dataRow": {"id": row["data_row"]["id"]}, "project": {"id": project_id}}
        _, answer = api.send_webhook("/webhooks/labelbox", body, secret, delivery_id=f"demo-{uuid.uuid4().hex}",
                                     event="LABEL_CREATED")
    run_id = str(answer.get("run_id") or "")
    if not run_id:
        print(f"lbtrain demo: the rule did not start a run: {answer}", file=sys.stderr)
        return False
    run = _watch(api, {run_id: f"{LOOP_MODEL_TYPE} (rule)"}, time.monotonic(), timeout)[run_id]
    counts = run.get("prelabel") or {}
    lb = FileLabelbox(labelbox_dir)
    queue = sorted(lb.priorities(project_id).items(), key=lambda kv: kv[1])[:3]
    print(f"lbtrain demo: run {run_id} {run['status']}: pre-labeled {counts.get('prelabeled_rows', 0)} of "
          f"{counts.get('unlabeled', 0)} unlabeled rows ({counts.get('imports', 0)} imports in "
          f"{labelbox_dir / 'projects' / project_id / 'prelabels'}), prioritised {counts.get('prioritised', 0)} "
          f"(front of the queue: {', '.join(r for r, _ in queue)}; {labelbox_dir / 'projects' / project_id}"
          f"/priorities.json). Label those and the rule trains again.", flush=True)
    return run["status"] == "SUCCEEDED" and bool(counts.get("prioritised"))


def default_model_types() -> list[str]:
    """Every registered model type that has a reference dataset."""
    from lbtrain import datasets, pipelines

    return [mt for mt in pipelines.names() if mt in datasets.MODULES]


def run_demo(port: int = 0, limit: int | None = None, timeout: float = 3600.0,
             model_types: list[str] | None = None, parallel: bool = False, exit_at_end: bool = False,
             loop: bool = True) -> int:
    from lbtrain import datasets, pipelines
    from lbtrain.cli import describe_run

    model_types = model_types or default_model_types()
    unknown = [mt for mt in model_types if mt not in datasets.MODULES]
    if unknown:
        print(f"lbtrain demo: no reference dataset for {', '.join(unknown)} "
              f"(have: {', '.join(default_model_types())})", file=sys.stderr)
        return 2
    base = configmod.from_env()
    state_dir = Path(base.state_dir) / "demo"
    labelbox_dir = state_dir / "labelbox"
    port = port or free_port()
    env = {**os.environ, "LBTRAIN_STATE_DIR": str(state_dir), "LABELBOX_DIR": str(labelbox_dir),
           "ARTIFACT_ROOT": str(state_dir / "artifacts"), "LBTRAIN_API_URL": f"http://127.0.0.1:{port}",
           "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()

    model_runs: dict[str, str] = {}
    for model_type in model_types:
        model_run_id = f"demo-{uuid.uuid4().hex[:8]}"
        summary = datasets.build(model_type, str(labelbox_dir), model_run_id, limit=limit)
        model_runs[model_type] = model_run_id
        print(f"lbtrain demo: {model_type}: model run {model_run_id} from {summary.get('dataset')}: "
              f"{summary['rows']} data rows, splits {summary.get('per_split')}", flush=True)

    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "dev.log"
    print(f"lbtrain demo: starting the local stack on port {port} (emulators, services; log {log_path})",
          flush=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lbtrain.cli", "dev", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        api = Client(f"http://127.0.0.1:{port}", retries=0, timeout=5)
        _wait_ready(api, proc, log_path)
        print(f"lbtrain demo: watch the runs live at http://127.0.0.1:{port}/dashboard/", flush=True)
        local = read_local_secrets(str(state_dir))
        api = Client(f"http://127.0.0.1:{port}", token=base.api_token or local["api_token"])
        secret = base.labelbox_webhook_secret or local["labelbox_webhook_secret"]
        token_from = "API_TOKEN" if base.api_token else f"in {state_dir / 'dev.json'}"
        final: dict[str, dict] = {}
        runs: dict[str, str] = {}
        for model_type, model_run_id in model_runs.items():
            body = {"modelId": "demo-model", "modelRunId": model_run_id, "modelType": model_type}
            status, answer = api.send_webhook("/model_run", body, secret, delivery_id=f"demo-{uuid.uuid4().hex}")
            runs[answer["run_id"]] = model_type
            print(f"lbtrain demo: signed /model_run webhook for {model_type} → {status}, run {answer['run_id']}",
                  flush=True)
            if not parallel:  # one at a time: each trainer gets the whole (small) machine
                final.update(_watch(api, {answer["run_id"]: model_type}, start, timeout))
        if parallel:
            final = _watch(api, runs, start, timeout)
        print()
        for run in final.values():
            print(describe_run(run))
        print("\nlbtrain demo: results (test split)")
        dashboard = f"{api.base_url}/dashboard/"
        for run in final.values():
            metric = pipelines.get(run["model_type"]).headline_metric
            value = (run.get("metrics") or {}).get(metric)
            shown = f"{metric} {value:.4f}" if isinstance(value, int | float) else (run.get("error") or {}).get(
                "message", "")
            print(f"  {run['model_type']:<28} {run['status']:<10} {shown}")
            print(f"  {'':<28} {dashboard}runs/{run['run_id']}")
        ok = all(run["status"] == "SUCCEEDED" for run in final.values())
        if loop and LOOP_MODEL_TYPE in model_types:
            ok = _labeling_loop(api, secret, labelbox_dir, limit, timeout) and ok
        print(f"lbtrain demo: {'all runs SUCCEEDED' if ok else 'some runs did not succeed'} in "
              f"{time.monotonic() - start:.0f}s. Labelbox statuses and predictions: "
              f"{labelbox_dir}/model_runs/<id>/", flush=True)
        if exit_at_end:
            print(f"lbtrain demo: API was at {api.base_url}/runs, dashboard at {dashboard} (stopped now; "
                  f"`lbtrain demo` without --exit, or `lbtrain dev`, keeps a stack up)", flush=True)
            return 0 if ok else 1
        print(f"lbtrain demo: the stack stays up: dashboard {dashboard} (each run's page is listed above), "
              f"REST API {api.base_url}/runs (token: {token_from}; from another terminal: "
              f"LBTRAIN_STATE_DIR={state_dir} lbtrain runs list). Ctrl-C stops everything.", flush=True)
        interrupted = _stay_up(proc, log_path)
        return (0 if ok else 1) if interrupted else 1
    except KeyboardInterrupt:
        interrupted = True
        print("\nlbtrain demo: interrupted", flush=True)
        return 130
    except (ApiError, RuntimeError, TimeoutError) as exc:
        print(f"lbtrain demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        print("lbtrain demo: stopping the local stack", flush=True)
        _stop(proc)
        if interrupted:
            print("lbtrain demo: stopped", flush=True)
