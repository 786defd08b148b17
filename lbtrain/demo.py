"""`lbtrain demo`: the whole product on this machine, from nothing to a deployed model.

Starts `lbtrain dev` (emulators included) as a child process, builds the reference model run
from public data, triggers it the way Labelbox does (a signed `/model_run` webhook), shows
each stage as it goes, prints the metrics, and stops everything it started, Ctrl-C included.
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

MODEL_TYPE = "text_single_classification"


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


def _progress(start: float):  # noqa: ANN202
    seen: dict[str, str] = {}

    def show(run: dict) -> None:
        for step in run.get("steps", []):
            key = f"{step['stage']} a{step['attempt']}"
            if seen.get(key) != step["state"] and step["state"] != "PENDING":
                seen[key] = step["state"]
                print(f"  [{time.monotonic() - start:6.1f}s] {key:<12} {step['state']}", flush=True)

    return show


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(port: int = 0, limit: int | None = None, timeout: float = 1800.0) -> int:
    from lbtrain import datasets
    from lbtrain.cli import describe_run

    base = configmod.from_env()
    state_dir = Path(base.state_dir) / "demo"
    labelbox_dir = state_dir / "labelbox"
    port = port or free_port()
    env = {**os.environ, "LBTRAIN_STATE_DIR": str(state_dir), "LABELBOX_DIR": str(labelbox_dir),
           "ARTIFACT_ROOT": str(state_dir / "artifacts"), "LBTRAIN_API_URL": f"http://127.0.0.1:{port}",
           "PYTHONUNBUFFERED": "1"}
    model_run_id = f"demo-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()

    print(f"lbtrain demo: building the reference model run {model_run_id} (Rotten Tomatoes, 3 classes)", flush=True)
    summary = datasets.build(MODEL_TYPE, str(labelbox_dir), model_run_id, limit=limit)
    print(f"  {summary['rows']} data rows; splits {summary['per_split']}; classes {summary['classes']}", flush=True)

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
        local = read_local_secrets(str(state_dir))
        api = Client(f"http://127.0.0.1:{port}", token=base.api_token or local["api_token"])
        body = {"modelId": "demo-model", "modelRunId": model_run_id, "modelType": MODEL_TYPE}
        secret = base.labelbox_webhook_secret or local["labelbox_webhook_secret"]
        status, answer = api.send_webhook("/model_run", body, secret,
                                          delivery_id=f"demo-{uuid.uuid4().hex}")
        run_id = answer["run_id"]
        print(f"lbtrain demo: signed /model_run webhook → {status}, run {run_id}", flush=True)
        run = api.wait(run_id, timeout=timeout, on_change=_progress(start))
        print(describe_run(run))
        print(f"lbtrain demo: run {run['status']} in {time.monotonic() - start:.0f}s. "
              f"API was at {api.base_url}/runs/{run_id} (stopped now; `lbtrain dev` keeps a stack up).")
        statuses = labelbox_dir / "model_runs" / model_run_id / "status.jsonl"
        print(f"  Labelbox statuses: {statuses}\n  predictions: {statuses.parent / 'predictions'}")
        return 0 if run["status"] == "SUCCEEDED" else 1
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
