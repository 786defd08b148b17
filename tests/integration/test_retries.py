"""Automatic retries of infrastructure failures (docs/architecture.md §7.8) on the real emulators: a
local job killed mid-train, and Vertex refusing or failing jobs for quota or capacity (the real
aiplatform client against the fake, failures injected there), each retried on the right machine."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain import storage
from lbtrain.adapters.vertex_backend import VertexBackend
from lbtrain.messages import JobEvent
from tests.fakes.vertex import FakeVertex, serve

FAST = dict(retry_base_seconds=0.2, retry_cap_seconds=0.5)
QUOTA = ("The following quota metrics exceed quota limits: "
         "aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus")
NO_CAPACITY = ("Resources are insufficient in region: us-central1. Please try a different region. "
               "If you use K80, please consider using P100 or V100 instead.")
PREEMPTED = "The replica workerpool0-0 was preempted."
EXIT_1 = "The replica workerpool0-0 exited with a non-zero status of 1."
L4 = {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1, "strategy": "spot"}
T4 = {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}
CPU = {"machine_type": "n1-standard-8"}
MACHINES = json.dumps({"*/train": [L4, T4, CPU]})


def steps_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["stage"]: s for s in run["steps"]}


def test_a_local_job_killed_mid_train_succeeds_on_attempt_2(stack_factory, tmp_path: Path, caplog):
    stack = stack_factory(**FAST)
    gate = tmp_path / "gate"
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr, params={
        "noop": {"progress": {"train": {"epochs": 2, "gate": str(gate)}}}})["run_id"]
    job = stack.wait_for(lambda: (steps_of(stack.api.get_run(run_id))["train"].get("job") or None),
                         what="train running")
    state_file = stack.jobs_dir / job["id"] / "state.json"
    child = stack.wait_for(lambda: json.loads(state_file.read_text()).get("child_pid") if state_file.exists()
                           else None, what="train job process")
    with caplog.at_level(logging.WARNING, logger="lbtrain.completion"):
        os.kill(child, signal.SIGKILL)  # the machine's OOM killer, or a lost VM
        gate.touch()  # the next attempt trains straight through
        run = stack.wait(run_id)
    assert run["status"] == "SUCCEEDED", run
    train = steps_of(run)["train"]
    assert train["attempt"] == 2 and train["state"] == "SUCCEEDED" and train["machine"] == "local"
    [first] = train["attempts"]
    assert first["attempt"] == 1 and first["state"] == "FAILED" and first["machine"] == "local"
    assert first["failure"]["kind"] == "transient" and first["failure"]["reason"] == "killed by SIGKILL"
    assert "killed by signal SIGKILL" in first["error"] and first["retry_at"]
    assert all(s["attempt"] == 1 for s in run["steps"] if s["stage"] != "train")
    # Visible to Labelbox and in the logs.
    retry = [s for s in stack.deps.labelbox.statuses(mr) if "retrying" in (s.get("error_message") or "")]
    assert [s["status"] for s in retry] == ["TRAINING_MODEL"]
    assert "train attempt 1 on local failed (killed by SIGKILL" in retry[0]["error_message"]
    assert stack.statuses(mr)[-1] == "COMPLETE"
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "retry"]
    assert lines and lines[0].fields["failure_reason"] == "killed by SIGKILL" and lines[0].fields["next_attempt"] == 2
    # And on the dashboard's run page timeline.
    with urllib.request.urlopen(f"{stack.dev.url}/dashboard/runs/{run_id}", timeout=30) as resp:
        page = resp.read().decode()
    assert 'data-stage="train" data-attempt="1"' in page and "on local" in page
    assert "killed by SIGKILL, retried automatically" in page


def test_a_data_error_fails_once_without_a_retry(stack_factory):
    stack = stack_factory(**FAST)
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr,
                                 params={"noop": {"fail": {"train": [1, 2, 3]}}})["run_id"]
    run = stack.wait(run_id)
    assert run["status"] == "FAILED"
    assert run["error"] == {"stage": "train", "message": "injected failure in train attempt 1"}
    train = steps_of(run)["train"]
    assert train["attempt"] == 1 and train["attempts"] == [] and train["failure"]["kind"] == "permanent"
    assert sum("-train-" in n for n in stack.job_names()) == 1


class VertexJobs:
    """Plays Vertex for each CustomJob the fake receives: each create of a stage takes the next
    outcome of `script[stage]` ("ok" by default): ("create", status, message) refuses the create,
    ("fail", message, code) fails the job, "ok" writes outputs.json and succeeds. The job's end is
    then published as a job event, as the log sink does."""

    def __init__(self, stack: Any, fake: FakeVertex, script: dict[str, list[Any]]):
        self.stack, self.fake, self.script = stack, fake, script
        self.lock = threading.Lock()
        self.outcomes: dict[str, Any] = {}  # job display name → its outcome
        fake.create_error = self.create_error
        fake.on_job_created = lambda job: threading.Thread(target=self.run, args=(job,), daemon=True).start()

    def create_error(self, body: dict[str, Any]) -> tuple[int, Any] | None:
        with self.lock:
            queue = self.script.get(body["labels"]["stage"]) or []
            outcome = queue.pop(0) if queue else "ok"
            if outcome[0] != "create":
                self.outcomes[body["displayName"]] = outcome
                return None
        _, status, message = outcome
        return status, {"error": {"code": status, "message": message,
                                  "status": {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}.get(status, "UNKNOWN")}}

    def run(self, job: dict[str, Any]) -> None:
        job_id = job["name"].rsplit("/", 1)[-1]
        args = job["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"]
        labels = job["labels"]
        with self.lock:
            outcome = self.outcomes.pop(job["displayName"], "ok")
        self.fake.set_state(job_id, "RUNNING")
        if outcome == "ok":
            out = args[args.index("--outputs") + 1]
            storage.write_json(storage.join(out, "outputs.json"), {"metrics": {"accuracy": 1.0, "macro_f1": 1.0},
                                                                   "uris": {}})
            self.fake.set_state(job_id, "SUCCEEDED")
        else:
            _, message, code = outcome
            if message == EXIT_1:  # the job itself said why
                out = args[args.index("--outputs") + 1]
                storage.write_json(storage.join(out, "error.json"), {"message": "class 'b' has no test example",
                                                                     "type": "DataError"})
            self.fake.set_state(job_id, "FAILED", error=message, code=code)
        state = "SUCCEEDED" if outcome == "ok" else "FAILED"
        self.stack.deps.bus.publish("job-events", JobEvent(job_id=job_id, state=state, run_id=labels["run_id"],
                                                           stage=labels["stage"],
                                                           attempt=int(labels["attempt"])).to_dict())


@pytest.fixture
def vertex_retry_stack(stack_factory) -> Iterator[Callable[[dict[str, list[Any]]], tuple[Any, FakeVertex]]]:
    fake = FakeVertex()
    server = serve(fake)

    def start(script: dict[str, list[Any]], **overrides: Any) -> tuple[Any, FakeVertex]:
        stack = stack_factory(**{**FAST, "job_machines": MACHINES, **overrides})
        cfg = stack.dev.config.with_overrides(job_backend="vertex", job_image="img:1", job_image_gpu="img-gpu:1",
                                              region="us-central1",
                                              vertex_api_endpoint=f"http://127.0.0.1:{server.server_address[1]}")
        stack.deps.backend = VertexBackend(cfg)
        VertexJobs(stack, fake, script)
        return stack, fake

    yield start
    server.shutdown()


def train_creates(fake: FakeVertex) -> list[dict[str, Any]]:
    return [b for b in fake.created() if b["labels"]["stage"] == "train"]


def machine_of(body: dict[str, Any]) -> tuple[str, str]:
    """(machine type, accelerator name); the REST body may carry the enum's name or its number."""
    from google.cloud.aiplatform_v1.types import AcceleratorType

    spec = body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]
    accelerator = spec.get("acceleratorType", "")
    return spec["machineType"], AcceleratorType(int(accelerator)).name if str(accelerator).isdigit() else accelerator


def strategy_of(body: dict[str, Any]) -> str:
    from google.cloud.aiplatform_v1.types import Scheduling

    strategy = body["jobSpec"].get("scheduling", {}).get("strategy", "")
    return Scheduling.Strategy(int(strategy)).name if str(strategy).isdigit() else strategy


@pytest.mark.parametrize("how", ["create", "job"])
def test_quota_or_capacity_twice_moves_to_the_fallback_machine(vertex_retry_stack, how):
    script = {"train": [("create", 429, QUOTA), ("create", 429, QUOTA)] if how == "create" else
              [("fail", NO_CAPACITY, 8), ("fail", QUOTA, 8)]}
    stack, fake = vertex_retry_stack(script)
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    run = stack.wait(run_id, timeout=90)
    assert run["status"] == "SUCCEEDED", run
    train = steps_of(run)["train"]
    assert train["attempt"] == 3 and train["machine"] == "n1-standard-8"
    assert [h["machine"] for h in train["attempts"]] == ["g2-standard-8 + 1×NVIDIA_L4 (spot)",
                                                          "n1-standard-8 + 1×NVIDIA_TESLA_T4"]
    reasons = [h["failure"]["reason"] for h in train["attempts"]]
    assert reasons == (["quota", "quota"] if how == "create" else ["no capacity", "quota"])
    assert all(h["failure"]["kind"] == "capacity" and h["retry_at"] for h in train["attempts"])
    if how == "create":
        assert all(h["job"] is None and "creating the job failed: quota" in h["error"] for h in train["attempts"])
    # What crossed the wire: L4 on Spot, then T4, then the CPU machine, each a new attempt's job.
    bodies = train_creates(fake)
    assert [machine_of(b) for b in bodies] == [("g2-standard-8", "NVIDIA_L4"), ("n1-standard-8", "NVIDIA_TESLA_T4"),
                                               ("n1-standard-8", "")]
    assert [strategy_of(b) for b in bodies] == ["SPOT", "", ""]
    assert [b["labels"]["attempt"] for b in bodies] == ["1", "2", "3"]
    assert stack.statuses(mr)[-1] == "COMPLETE"


def test_retries_exhausted_fail_the_run_naming_every_attempt(vertex_retry_stack):
    stack, fake = vertex_retry_stack({"train": [("fail", PREEMPTED, 14)] * 3})
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    run = stack.wait(run_id, timeout=90)
    assert run["status"] == "FAILED"
    message = run["error"]["message"]
    assert run["error"]["stage"] == "train" and message.startswith("3 attempts failed: ")
    for n in (1, 2, 3):
        assert f"attempt {n} on g2-standard-8 + 1×NVIDIA_L4 (spot): preempted: {PREEMPTED}" in message
    # A preemption is no capacity problem: every attempt stays on the first machine.
    assert [machine_of(b) for b in train_creates(fake)] == [("g2-standard-8", "NVIDIA_L4")] * 3
    train = steps_of(run)["train"]
    assert train["attempt"] == 3 and len(train["attempts"]) == 2 and train["failure"]["reason"] == "preempted"
    last = stack.deps.labelbox.statuses(mr)[-1]
    assert last["status"] == "FAILED" and "3 attempts failed" in last["error_message"]


def test_a_job_that_failed_on_its_data_is_not_retried_on_vertex(vertex_retry_stack):
    stack, fake = vertex_retry_stack({"train": [("fail", EXIT_1, 3)]})
    mr = stack.model_run()
    run = stack.wait(stack.api.start_run("text_single_classification", mr)["run_id"], timeout=60)
    assert run["status"] == "FAILED"
    assert run["error"]["message"] == f"class 'b' has no test example ({EXIT_1})"
    assert len(train_creates(fake)) == 1 and steps_of(run)["train"]["attempts"] == []


def test_flex_start_and_spot_reach_the_custom_jobs_scheduling(vertex):
    from lbtrain.adapters.backend import JobSpec
    from lbtrain.config import Config

    fake, endpoint = vertex
    machines = {"*/train": [L4, {**CPU, "strategy": "FLEX_START", "max_wait_hours": 0.5, "max_hours": 2}]}
    backend = VertexBackend(Config(project="p1", region="us-central1", artifact_root="gs://b/l", job_image="img:1",
                                   job_image_gpu="img-gpu:1", vertex_api_endpoint=endpoint,
                                   job_machines=json.dumps(machines)))
    for index in (0, 1):
        backend.submit(JobSpec(name=f"dev-r1-train-a{index + 1}", run_id="r1", stage="train", attempt=index + 1,
                               model_type="ner", inputs_uri="gs://b/l/in.json", outputs_uri=f"gs://b/l/a{index}",
                               machine_index=index))
    spot, flex = fake.created()
    assert strategy_of(spot) == "SPOT"
    assert spot["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"] == "img-gpu:1"
    assert strategy_of(flex) == "FLEX_START" and machine_of(flex) == ("n1-standard-8", "")
    assert flex["jobSpec"]["scheduling"]["maxWaitDuration"] == "1800s"
    assert flex["jobSpec"]["scheduling"]["timeout"] == "7200s"


def test_a_long_back_off_is_left_to_the_reconciler(vertex_retry_stack):
    """A retry due later than the launcher holds a message: acknowledged, then offered by the
    reconciler once due (and not before)."""
    from datetime import timedelta

    from lbtrain import domain as d
    from lbtrain.adapters.firestore_store import RUNS, STEPS
    from lbtrain.launch import HOLD_SECONDS, handle_step
    from lbtrain.messages import StepMessage
    from lbtrain.reconcile import reconcile_once

    stack, fake = vertex_retry_stack({"train": [("create", 503, "The service is currently unavailable.")]},
                                     retry_base_seconds=4 * HOLD_SECONDS, retry_cap_seconds=4 * HOLD_SECONDS)
    mr = stack.model_run()
    run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    train = stack.wait_for(lambda: (lambda s: s if s["attempt"] == 2 else None)(
        steps_of(stack.api.get_run(run_id))["train"]), what="train attempt 2 scheduled")
    assert train["state"] == "PENDING" and train["attempts"][0]["failure"]["reason"] == "Vertex unavailable"
    assert "creating the job failed: Vertex unavailable" in train["attempts"][0]["error"]
    assert handle_step(stack.deps, StepMessage(run_id, "train", 2)).startswith("no-op: train attempt 2 is due at")
    assert not [a for a in reconcile_once(stack.deps) if run_id in a]  # not due: nothing offered
    # Time passes: the back-off is over.
    ref = stack.deps.store.db.collection(RUNS).document(run_id).collection(STEPS).document("train")
    ref.update({"not_before": d.now() - timedelta(seconds=1)})
    actions = reconcile_once(stack.deps)
    assert any(f"{run_id}: retry due: re-drove train a2" in a for a in actions), actions
    run = stack.wait(run_id, timeout=60)
    assert run["status"] == "SUCCEEDED" and steps_of(run)["train"]["attempt"] == 2
    assert len(train_creates(fake)) == 2


def test_a_killed_image_train_job_resumes_from_its_checkpoint_on_attempt_2(stack_factory, tmp_path: Path):
    """The real trainer, not the no-op job: attempt 2 continues from attempt 1's last checkpoint
    (docs/architecture.md §4, "Checkpoints and resume") instead of training from the start."""
    import torch

    from lbtrain import datasets

    stack = stack_factory(job_module="jobs.main", **FAST)
    mr = "mr-resume"
    datasets.build("image_single_classification", str(stack.labelbox_dir), mr, limit=200)
    run_id = stack.api.start_run("image_single_classification", mr, params={
        "epochs": 10, "patience": 10, "threads": 1, "max_seconds": 600})["run_id"]
    job = stack.wait_for(lambda: (steps_of(stack.api.get_run(run_id))["train"].get("job") or None),
                         timeout=120, what="train running")
    state_file = stack.jobs_dir / job["id"] / "state.json"
    child = stack.wait_for(lambda: json.loads(state_file.read_text()).get("child_pid") if state_file.exists()
                           else None, what="train job process")
    ckpt = Path(storage.run_dir(stack.dev.config.artifact_root, run_id, "train", 1)) / "checkpoints" / "last.pt"
    stack.wait_for(lambda: ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= 2, timeout=150,
                   what="a checkpoint after epoch 2")
    os.kill(child, signal.SIGKILL)  # a Spot VM preempted mid-train
    killed_after = int(torch.load(ckpt, weights_only=True)["epoch"])
    run = stack.wait(run_id, timeout=300)
    assert run["status"] == "SUCCEEDED", run
    train = steps_of(run)["train"]
    assert train["attempt"] == 2 and train["attempts"][0]["state"] == "FAILED"
    assert (train["metrics"]["resumed_from_attempt"], train["metrics"]["resumed_from_epoch"]) == (1, killed_after)
    assert run["metrics"]["accuracy"] > 0.3  # the bar of tests/unit/test_image_single_jobs.py
