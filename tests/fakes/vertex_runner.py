"""Runs the fake Vertex's CustomJobs as local processes and reports them the way GCP does.

Each created job's container (`containerSpec.args` and `env`) runs as `python -m jobs.main …` (or its
`containerSpec.command`, with this interpreter for `python`); the
job moves PENDING → RUNNING → SUCCEEDED/FAILED (CANCELLED when the fake receives `:cancel`), and
every state change is published to the deployment's job-events topic as a Cloud Logging sink
entry for `resource.type="ml_job"` — what the log sink does in the cloud. The job-events handler
then re-reads the state from the fake, so the whole JOB_BACKEND=vertex path runs unchanged.
A job fated by `fake.inject("customJobs", Failure(...))` (http=0) starts no process: it goes RUNNING
and ends as its failure says (e.g. JOB_STATE_FAILED, code 8, "Resources are insufficient in region").
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

from tests.fakes.vertex import FakeVertex, _now

SINK_MESSAGES = {
    "RUNNING": "Job is running.",
    "SUCCEEDED": "Job completed successfully.",
    "FAILED": "Job failed.",
    "CANCELLED": "Job was cancelled.",
}


def sink_entry(project: str, job_id: str, state: str, seq: int) -> dict[str, Any]:
    """A LogEntry as a Pub/Sub log sink publishes it (shape of tests/data/logsink/*.json)."""
    return {
        "insertId": f"{job_id}-{seq}",
        "logName": f"projects/{project}/logs/ml.googleapis.com%2F{job_id}",
        "receiveTimestamp": _now(),
        "resource": {"type": "ml_job", "labels": {"job_id": job_id, "project_id": project, "task_name": "service"}},
        "severity": "ERROR" if state == "FAILED" else "INFO",
        "textPayload": SINK_MESSAGES.get(state, state),
        "timestamp": _now(),
    }


@dataclass
class JobRunner:
    """Attach with `runner.attach(fake)`; `stop()` kills what still runs."""

    project: str
    job_events_topic: str  # full topic path projects/P/topics/T on the Pub/Sub emulator
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # added to each job's container env (emulator hosts…)
    python: str = sys.executable
    cwd: Path | None = None  # the image's WORKDIR when running an image's environment (tests/prod)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    sink_entries: list[dict[str, Any]] = field(default_factory=list)
    _publisher: Any = None
    _seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False
    # Jobs of these stages stay RUNNING without starting a process until cancelled (tests of cancel).
    hold_stages: set[str] = field(default_factory=set)

    def attach(self, fake: FakeVertex) -> None:
        self.fake = fake
        fake.on_job_created = lambda job: threading.Thread(target=self._run, args=(job,), daemon=True).start()

    def _publish(self, job_id: str, state: str) -> None:
        from google.cloud import pubsub_v1

        with self._lock:
            if self._publisher is None:
                self._publisher = pubsub_v1.PublisherClient()
            self._seq += 1
            entry = sink_entry(self.project, job_id, state, self._seq)
            self.sink_entries.append(entry)
        self._publisher.publish(self.job_events_topic, json.dumps(entry).encode()).result(timeout=30)

    def _state(self, job_id: str) -> str:
        with self.fake.lock:
            return str(self.fake.jobs[job_id]["state"]).removeprefix("JOB_STATE_")

    def _run(self, job: dict[str, Any]) -> None:
        job_id = job["name"].rsplit("/", 1)[-1]
        container = job["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
        with self.fake.lock:
            fate = self.fake.fated.get(job["name"])
        if fate is not None:
            self.fake.set_state(job_id, "RUNNING")
            self._publish(job_id, "RUNNING")
            self.fake.set_state(job_id, fate.state, error=fate.message, code=fate.code)
            self._publish(job_id, fate.state)
            return
        if job.get("labels", {}).get("stage") in self.hold_stages:
            self.fake.set_state(job_id, "RUNNING")
            self._publish(job_id, "RUNNING")
            while self._state(job_id) != "CANCELLING" and not self._stopping:
                time.sleep(0.2)
            self.fake.set_state(job_id, "CANCELLED")
            self._publish(job_id, "CANCELLED")
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "PYTHONUNBUFFERED": "1",
            **{e["name"]: e["value"] for e in container.get("env", [])},
            **self.env,
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{job['displayName']}.log", "wb") as log:
            # The image's entrypoint is `python -m jobs.main`; a containerSpec.command replaces it.
            command = [self.python, *container["command"][1:]] if container.get("command") else \
                [self.python, "-m", "jobs.main"]
            proc = subprocess.Popen([*command, *container["args"]], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=self.cwd)
        self.procs[job_id] = proc
        self.fake.set_state(job_id, "RUNNING")
        self._publish(job_id, "RUNNING")
        while proc.poll() is None:
            if self._state(job_id) == "CANCELLING" or self._stopping:
                proc.kill()
                proc.wait()
                self.fake.set_state(job_id, "CANCELLED")
                self._publish(job_id, "CANCELLED")
                return
            time.sleep(0.2)
        if proc.returncode == 0:
            self.fake.set_state(job_id, "SUCCEEDED")
            self._publish(job_id, "SUCCEEDED")
        else:
            self.fake.set_state(job_id, "FAILED",
                                error=f"The replica workerpool0-0 exited with a non-zero status of {proc.returncode}.")
            self._publish(job_id, "FAILED")

    def stop(self) -> None:
        self._stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
