"""LocalBackend (lbtrain/adapters/local_backend.py) with the no-op job module, without Pub/Sub.

The runner publishes its JobEvent after recording the job's final state; here PUBSUB_EMULATOR_HOST
points at a closed port, so that publish keeps retrying. The tests only read what the backend
reads (the job directory) and kill the runners they started when they end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbtrain import storage
from lbtrain.adapters import local_backend
from lbtrain.adapters.backend import JobSpec
from lbtrain.adapters.local_backend import LocalBackend, pid_alive
from lbtrain.config import Config
from lbtrain.domain import JobStatus, job_name
from lbtrain.emulators import free_port

TIMEOUT = 30.0
MODEL_TYPE = "text_single_classification"


@pytest.fixture()
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    cfg = Config(project="unit-local-backend", deployment_name="unit", artifact_root=str(tmp_path / "art"),
                 job_module="lbtrain.noop_job", pubsub_emulator_host=f"127.0.0.1:{free_port()}",
                 firestore_emulator_host=f"127.0.0.1:{free_port()}")
    be = LocalBackend(cfg)
    try:
        yield be
    finally:
        _kill_runners(be)


def _kill_runners(be: LocalBackend) -> None:
    """End the runners this test started (each leads its own process group), by pid."""
    pids = set()
    if be.root.exists():
        for job_dir in be.root.iterdir():
            state = local_backend.read_json(job_dir / "state.json") or {}
            if state.get("runner_pid"):
                pids.add(state["runner_pid"])
    for proc in list(local_backend._children):
        if proc.pid in pids and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    local_backend._reap()


def _spec(be: LocalBackend, run_id: str, stage: str = "etl", attempt: int = 1, params: dict | None = None) -> JobSpec:
    root = be.config.artifact_root
    inputs = storage.join(root, "runs", run_id, "inputs", f"{stage}-a{attempt}.json")
    storage.write_json(inputs, {"run_id": run_id, "model_type": MODEL_TYPE, "params": params or {},
                                "stage": stage, "attempt": attempt, "upstream": {}})
    return JobSpec(name=job_name(be.config.deployment_name, run_id, stage, attempt), run_id=run_id, stage=stage,
                   attempt=attempt, model_type=MODEL_TYPE, inputs_uri=inputs,
                   outputs_uri=storage.run_dir(root, run_id, stage, attempt))


def _wait_terminal(be: LocalBackend, job_id: str, timeout: float = TIMEOUT) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = be.get_status(job_id)
        if status.terminal:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not terminal after {timeout}s: {be.get_status(job_id)}")


def _wait_state(be: LocalBackend, job_id: str, state: str, timeout: float = TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = local_backend.read_json(be.job_dir(job_id) / "state.json") or {}
        if data.get("state") == state:
            return data
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {state}")


def test_submit_runs_the_job_to_success(backend: LocalBackend) -> None:
    spec = _spec(backend, "r0000000000000001", "train", 1)
    assert backend.find_by_name(spec.name) is None
    ref = backend.submit(spec)
    assert ref.backend == "local" and ref.id == spec.name and ref.name == spec.name
    assert ref.url.startswith("file://") and ref.url.endswith("job.log")
    assert backend.find_by_name(spec.name) == ref
    status = _wait_terminal(backend, ref.id)
    assert status == JobStatus("SUCCEEDED", "")
    outputs = storage.read_json(storage.join(spec.outputs_uri, "outputs.json"))
    assert outputs["run_id"] == spec.run_id and outputs["stage"] == "train" and outputs["attempt"] == 1
    recorded = json.loads((backend.job_dir(ref.id) / "spec.json").read_text(encoding="utf-8"))
    assert recorded["command"][-len(spec.args()):] == spec.args()
    assert recorded["command"][1:3] == ["-m", "lbtrain.noop_job"]
    state = local_backend.read_json(backend.job_dir(ref.id) / "state.json")
    assert state["returncode"] == 0 and isinstance(state["ended_at"], float)


def test_failing_job_reports_the_message_from_error_json(backend: LocalBackend) -> None:
    spec = _spec(backend, "r0000000000000002", "train", 1, params={"noop": {"fail": {"train": [1]}}})
    ref = backend.submit(spec)
    status = _wait_terminal(backend, ref.id)
    assert status.state == "FAILED"
    assert status.error == "injected failure in train attempt 1"
    assert not storage.exists(storage.join(spec.outputs_uri, "outputs.json"))


def test_cancel_of_a_sleeping_job(backend: LocalBackend) -> None:
    spec = _spec(backend, "r0000000000000003", "train", 1, params={"noop": {"sleep": {"train": 60}}})
    ref = backend.submit(spec)
    running = _wait_state(backend, ref.id, "RUNNING")
    child = running["child_pid"]
    assert pid_alive(child)
    assert backend.get_status(ref.id).state == "RUNNING"
    assert backend.active_jobs() == [ref.id]
    t0 = time.monotonic()
    backend.cancel(ref.id)
    status = _wait_terminal(backend, ref.id, timeout=15)
    assert status.state == "CANCELLED", status
    assert time.monotonic() - t0 < 10  # well before the 60 s sleep would end
    deadline = time.monotonic() + 5
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child), "the job process is still running after its cancellation"
    assert backend.active_jobs() == []


def test_cancel_right_after_submit_ends_cancelled(backend: LocalBackend) -> None:
    """The launcher cancels a job it just submitted when the run was cancelled meanwhile
    (launch.handle_step → record.cancel_job). The job must end CANCELLED, like any cancel."""
    spec = _spec(backend, "r0000000000000004", "train", 1, params={"noop": {"sleep": {"train": 60}}})
    ref = backend.submit(spec)
    backend.cancel(ref.id)
    status = _wait_terminal(backend, ref.id, timeout=15)
    assert status.state == "CANCELLED", status


def test_submit_twice_with_the_same_name_is_one_job(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting_popen(args, *a, **kw):  # noqa: ANN001, ANN202
        spawned.append(list(args))
        return real_popen(args, *a, **kw)

    monkeypatch.setattr(local_backend.subprocess, "Popen", counting_popen)
    spec = _spec(backend, "r0000000000000005", "etl", 1)
    first = backend.submit(spec)
    second = backend.submit(spec)
    assert first == second
    assert len(spawned) == 1
    assert _wait_terminal(backend, first.id).state == "SUCCEEDED"
    third = backend.submit(spec)  # after it ended, too
    assert third == first and len(spawned) == 1
    assert backend.get_status(first.id).state == "SUCCEEDED"


def test_concurrent_submits_of_the_same_name_spawn_once(backend: LocalBackend,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spawned = []
    real_popen = subprocess.Popen

    def counting_popen(args, *a, **kw):  # noqa: ANN001, ANN202
        spawned.append(args)
        return real_popen(args, *a, **kw)

    monkeypatch.setattr(local_backend.subprocess, "Popen", counting_popen)
    spec = _spec(backend, "r0000000000000006", "etl", 1)
    refs = []
    barrier = threading.Barrier(4)

    def go() -> None:
        barrier.wait()
        refs.append(backend.submit(spec))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refs) == 4 and len(set(refs)) == 1
    assert len(spawned) == 1
    assert _wait_terminal(backend, refs[0].id).state == "SUCCEEDED"


def test_runner_killed_without_a_result_is_failed(backend: LocalBackend) -> None:
    spec = _spec(backend, "r0000000000000007", "train", 1, params={"noop": {"sleep": {"train": 60}}})
    ref = backend.submit(spec)
    running = _wait_state(backend, ref.id, "RUNNING")
    os.killpg(running["runner_pid"], signal.SIGKILL)
    status = _wait_terminal(backend, ref.id, timeout=10)
    assert status.state == "FAILED" and "without recording a result" in status.error


def test_unknown_job(backend: LocalBackend) -> None:
    assert backend.find_by_name("unit-nope-etl-a1") is None
    status = backend.get_status("unit-nope-etl-a1")
    assert status.state == "FAILED" and "does not exist" in status.error
    backend.cancel("unit-nope-etl-a1")  # no error, nothing created
    assert not backend.job_dir("unit-nope-etl-a1").exists()
    assert backend.active_jobs() == []


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", ".."])
def test_unsafe_job_ids_are_refused(backend: LocalBackend, bad: str) -> None:
    with pytest.raises(ValueError):
        backend.get_status(bad)
    with pytest.raises(ValueError):
        backend.cancel(bad)
