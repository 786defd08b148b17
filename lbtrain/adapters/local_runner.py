"""Supervises one local job: runs its command, records the final state, publishes its JobEvent.

`python -m lbtrain.adapters.local_runner JOB_DIR`. Plays the part Vertex AI plays in the cloud:
the state it records is what `LocalBackend.get_status` re-reads.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lbtrain import config as configmod
from lbtrain import log as logmod
from lbtrain import storage
from lbtrain.adapters.local_backend import write_json
from lbtrain.messages import JobEvent

log = logging.getLogger("lbtrain.local_runner")
KILL_AFTER_SECONDS = 10.0


def _error_message(outputs_uri: str, returncode: int, log_path: Path) -> str:
    try:
        err = storage.read_json(storage.join(outputs_uri, "error.json"))
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    except (OSError, ValueError):
        pass
    if returncode < 0:  # killed from outside (the OOM killer, a lost machine): no error.json
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"job killed by signal {name}; log: {log_path}"
    return f"job exited with code {returncode}; log: {log_path}"


def run(job_dir: Path) -> int:
    config = configmod.from_env()
    logmod.setup(secrets=config.secrets(), project=config.project)
    spec = json.loads((job_dir / "spec.json").read_text(encoding="utf-8"))
    log_path = job_dir / "job.log"
    cancelled = False

    with open(log_path, "ab") as out:
        child = subprocess.Popen(spec["command"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def on_term(signum: int, frame: object) -> None:
        nonlocal cancelled
        cancelled = True
        if child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    write_json(job_dir / "state.json", {"state": "RUNNING", "runner_pid": os.getpid(), "child_pid": child.pid,
                                        "started_at": time.time()})
    if (job_dir / "cancel-requested").exists():
        on_term(signal.SIGTERM, None)
    bus = _make_bus(config)  # while the job runs, so the hand-off does not wait for imports
    try:
        rc = child.wait()
    except KeyboardInterrupt:
        rc = child.wait()
    deadline = time.monotonic() + KILL_AFTER_SECONDS
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if child.poll() is None:
        child.kill()
        rc = child.wait()

    cancelled = cancelled or (job_dir / "cancel-requested").exists()
    outputs_uri = spec["outputs_uri"]
    if cancelled and not (rc == 0 and storage.exists(storage.join(outputs_uri, "outputs.json"))):
        state, error = "CANCELLED", "cancelled"
    elif rc == 0 and storage.exists(storage.join(outputs_uri, "outputs.json")):
        state, error = "SUCCEEDED", ""
    elif rc == 0:
        state, error = "FAILED", "job exited 0 but wrote no outputs.json"
    else:
        state, error = "FAILED", _error_message(outputs_uri, rc, log_path)
    write_json(job_dir / "state.json", {"state": state, "error": error, "returncode": rc,
                                        "runner_pid": os.getpid(), "ended_at": time.time()})
    event = JobEvent(job_id=spec["name"], state=state, run_id=spec["run_id"], stage=spec["stage"],
                     attempt=spec["attempt"], outputs_uri=outputs_uri, error=error)
    _publish(bus, event)
    return 0


def _make_bus(config: configmod.Config):  # noqa: ANN202
    """On the emulator, its REST API (lbtrain/adapters/pubsub_rest.py: no gRPC to import for one message)."""
    host = config.pubsub_emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST", "")
    if host:
        from lbtrain.adapters.pubsub_rest import EmulatorRestBus

        return EmulatorRestBus(host, config.project, config.deployment_name)
    from lbtrain.adapters.pubsub_bus import PubSubBus

    return PubSubBus(config.project, config.deployment_name)


def _publish(bus, event: JobEvent) -> None:  # noqa: ANN001
    """Best effort with retries: if it never gets through, the reconciler reads the state file."""
    with logmod.bind(run_id=event.run_id, stage=event.stage, attempt=event.attempt):
        for attempt in range(5):
            try:
                bus.publish("job-events", event.to_dict(), {"job_id": event.job_id, "run_id": event.run_id})
                log.info("job %s %s", event.job_id, event.state)
                return
            except Exception as exc:  # noqa: BLE001 - any publish failure is retried, then left to the reconciler
                log.warning("publishing job event failed (try %d): %s", attempt + 1, exc)
                time.sleep(min(2**attempt, 10))
        log.error("job event for %s not published; the reconciler will pick the job up", event.job_id)


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
