"""Runs the fake Cloud Run's executions as local processes and reports them the way GCP does.

Each started execution's container (its job template with RunJob's overrides applied: `args`, `env`,
`command`) runs as `python -m jobs.main …` (or `module`, e.g. lbtrain.noop_job for orchestration tests);
the execution moves RUNNING → SUCCEEDED/FAILED (CANCELLED after `:cancel`), and its start and end are
published to the deployment's job-events topic as the Cloud Logging sink entries Cloud Run's system log
produces (`resource.type="cloud_run_job"`, tests/data/logsink/cloud_run_job_*.json). The job-events
handler re-reads the state from the fake, as on GCP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.cloud_run_admin import FakeCloudRun, _now

TEXTS = {
    "RUNNING": "Execution {e} has started.",
    "SUCCEEDED": "Execution {e} has completed successfully, 1 task(s) completed.",
    "FAILED": "Execution {e} has failed to complete, 0 task(s) completed successfully and 1 failed.",
    "CANCELLED": "Execution {e} has been cancelled.",
}


def sink_entry(project: str, location: str, job: str, execution: str, state: str, seq: int) -> dict[str, Any]:
    """A LogEntry as a Pub/Sub log sink publishes it for a Cloud Run job's system log."""
    return {
        "insertId": f"{execution}-{seq}",
        "labels": {"run.googleapis.com/execution_name": execution, "run.googleapis.com/task_index": "0",
                   "run.googleapis.com/task_attempt": "0"},
        "logName": f"projects/{project}/logs/run.googleapis.com%2Fvarlog%2Fsystem",
        "receiveTimestamp": _now(),
        "resource": {"type": "cloud_run_job",
                     "labels": {"job_name": job, "location": location, "project_id": project}},
        "severity": "ERROR" if state == "FAILED" else "INFO",
        "textPayload": TEXTS.get(state, state).format(e=execution),
        "timestamp": _now(),
    }


@dataclass
class ExecutionRunner:
    """Attach with `runner.attach(fake)`; `stop()` kills what still runs."""

    project: str
    job_events_topic: str  # projects/P/topics/T on the Pub/Sub emulator
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    module: str = "jobs.main"  # the image's entrypoint
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    sink_entries: list[dict[str, Any]] = field(default_factory=list)
    _publisher: Any = None
    _seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False
    # False: the log sink loses every entry (the reconciler's case); the executions still run and end.
    publish: bool = True

    def attach(self, fake: FakeCloudRun) -> None:
        self.fake = fake
        fake.on_execution_created = lambda ex: threading.Thread(target=self._run, args=(ex,), daemon=True).start()

    def _publish(self, name: str, state: str) -> None:
        from google.cloud import pubsub_v1

        if not self.publish:
            return
        parts = name.split("/")
        with self._lock:
            if self._publisher is None:
                self._publisher = pubsub_v1.PublisherClient()
            self._seq += 1
            entry = sink_entry(parts[1], parts[3], parts[5], parts[7], state, self._seq)
            self.sink_entries.append(entry)
        self._publisher.publish(self.job_events_topic, json.dumps(entry).encode()).result(timeout=30)

    def _run(self, execution: dict[str, Any]) -> None:
        name = execution["name"]
        container = execution["template"]["containers"][0]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
               "PYTHONUNBUFFERED": "1", **{e["name"]: e.get("value", "") for e in container.get("env", [])},
               **self.env}
        command = [self.python, *container["command"][1:]] if container.get("command") else \
            [self.python, "-m", self.module]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name.rsplit('/', 1)[1]}.log", "wb") as log:
            proc = subprocess.Popen([*command, *container.get("args", [])], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.fake.set_execution(name, "RUNNING")
        self._publish(name, "RUNNING")
        while proc.poll() is None:
            if self.fake.cancelling(name) or self._stopping:
                proc.kill()
                proc.wait()
                self.fake.set_execution(name, "CANCELLED")
                self._publish(name, "CANCELLED")
                return
            time.sleep(0.2)
        state = "SUCCEEDED" if proc.returncode == 0 else "FAILED"
        self.fake.set_execution(name, state, f"Task {name.rsplit('/', 1)[1]}-task0 failed with message: "
                                             f"The container exited with an error (exit code {proc.returncode}).")
        self._publish(name, state)

    def stop(self) -> None:
        self._stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
