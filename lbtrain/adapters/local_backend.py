"""LocalBackend: each job is a subprocess on this machine, supervised by `local_runner`.

A job's directory `{ARTIFACT_ROOT}/local-jobs/{name}/` is its whole record (spec.json,
state.json, job.log), so any process can read its state or cancel it: the services keep
nothing in memory, exactly as with Vertex AI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lbtrain import config as configmod
from lbtrain import storage
from lbtrain.adapters.backend import JobSpec
from lbtrain.domain import JobRef, JobStatus

_children: list[subprocess.Popen] = []  # only to reap exited runners (no zombies); never read as state


def _reap() -> None:
    _children[:] = [p for p in _children if p.poll() is None]


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie answers kill(0) but is dead
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


class LocalBackend:
    name = "local"

    def __init__(self, config: configmod.Config):
        self.config = config
        self.root = storage.local_path(config.artifact_root).resolve() / "local-jobs"

    def job_dir(self, job_id: str) -> Path:
        if "/" in job_id or job_id.startswith("."):
            raise ValueError(f"bad local job id {job_id!r}")
        return self.root / job_id

    def _ref(self, name: str) -> JobRef:
        return JobRef(backend=self.name, id=name, name=name, url=f"file://{self.job_dir(name) / 'job.log'}")

    def submit(self, spec: JobSpec) -> JobRef:
        _reap()
        self.root.mkdir(parents=True, exist_ok=True)
        job_dir = self.job_dir(spec.name)
        try:
            job_dir.mkdir()
        except FileExistsError:
            return self._ref(spec.name)  # same deterministic name: the job exists already
        python = self.config.job_python or sys.executable
        write_json(job_dir / "spec.json", {
            "name": spec.name, "run_id": spec.run_id, "stage": spec.stage, "attempt": spec.attempt,
            "model_type": spec.model_type, "outputs_uri": spec.outputs_uri, "labels": spec.labels,
            "command": [python, "-m", spec.module or self.config.job_module, *spec.args()],
        })
        env = {**os.environ, **configmod.to_env(self.config), "PYTHONUNBUFFERED": "1"}
        for not_for_jobs in ("API_TOKEN", "LABELBOX_WEBHOOK_SECRET"):  # jobs never need these
            env.pop(not_for_jobs, None)
        with open(job_dir / "runner.log", "ab") as log:
            proc = subprocess.Popen([python, "-m", "lbtrain.adapters.local_runner", str(job_dir)],
                                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=os.getcwd())
        _children.append(proc)
        if read_json(job_dir / "state.json") is None:
            write_json(job_dir / "state.json", {"state": "PENDING", "runner_pid": proc.pid})
        return self._ref(spec.name)

    def get_status(self, job_id: str) -> JobStatus:
        _reap()
        job_dir = self.job_dir(job_id)
        state = read_json(job_dir / "state.json")
        if state is None:
            if not job_dir.exists():
                return JobStatus("FAILED", f"local job {job_id} does not exist")
            return JobStatus("PENDING")
        if state["state"] in ("PENDING", "RUNNING") and not pid_alive(state.get("runner_pid")):
            # The runner may have just written its terminal state: read once more.
            state = read_json(job_dir / "state.json") or state
            if state["state"] in ("PENDING", "RUNNING"):
                return JobStatus("FAILED", "local job runner exited without recording a result")
        if state["state"] == "FAILED" and isinstance(state.get("returncode"), int):
            return JobStatus("FAILED", state.get("error", ""), exit_code=state["returncode"])
        return JobStatus(state["state"], state.get("error", ""))

    def machine_label(self, spec: JobSpec) -> str:
        """Every local job runs on this machine."""
        return "local"

    def find_by_name(self, name: str) -> JobRef | None:
        return self._ref(name) if self.job_dir(name).exists() else None

    def cancel(self, job_id: str) -> None:
        job_dir = self.job_dir(job_id)
        if not job_dir.exists():
            return
        (job_dir / "cancel-requested").touch()
        state = read_json(job_dir / "state.json") or {}
        pid = state.get("runner_pid")
        # A PENDING runner has not installed its signal handler yet; it checks the marker right
        # after it records RUNNING, so only a RUNNING runner is signalled.
        if state.get("state") == "RUNNING" and pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)  # the runner leads its own process group
            except ProcessLookupError:
                pass

    def active_jobs(self) -> list[str]:
        if not self.root.exists():
            return []
        out = []
        for job_dir in self.root.iterdir():
            state = read_json(job_dir / "state.json") or {}
            if state.get("state") in ("PENDING", "RUNNING") and pid_alive(state.get("runner_pid")):
                out.append(job_dir.name)
        return out

    def stop_all(self, grace_seconds: float = 15.0) -> int:
        """Cancel every job still running and wait for their runners to report (the dev stack on
        exit, while Pub/Sub is still up); runners still alive after the grace period are killed."""
        jobs = self.active_jobs()
        for job_id in jobs:
            self.cancel(job_id)
        pids = [(read_json(self.job_dir(j) / "state.json") or {}).get("runner_pid") for j in jobs]
        deadline = time.monotonic() + grace_seconds
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.1)
        for pid in pids:
            if pid_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _reap()
        return len(jobs)
