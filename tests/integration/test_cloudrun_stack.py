"""The local stack with STAGE_BACKENDS mixing Cloud Run jobs and Vertex CustomJobs: the real run_v2 and
aiplatform clients against their fakes, which run each job as a local process (the no-op job) and report
its end as the Cloud Logging sink entries GCP publishes (`cloud_run_job`, `ml_job`) on the job-events
topic; the job-events handler re-reads each state from the owning backend and chains the next stage."""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from lbtrain import domain as d
from lbtrain.completion import handle_job_event
from lbtrain.messages import LOG_SINK_STATE, BadMessage, parse_job_event
from lbtrain.reconcile import reconcile_once
from tests.conftest import fresh_id
from tests.fakes.cloud_run_admin import FakeCloudRun
from tests.fakes.cloud_run_admin import serve as serve_cloud_run
from tests.fakes.cloud_run_runner import ExecutionRunner
from tests.fakes.vertex import FakeVertex
from tests.fakes.vertex import serve as serve_vertex
from tests.fakes.vertex_runner import JobRunner

DATA = Path(__file__).resolve().parents[1] / "data" / "logsink"
MIXED = {"*/etl": "cloudrun", "*/train": "vertex", "text_*/train": "cloudrun", "*/evaluate": "cloudrun",
         "*/deploy": "cloudrun"}


def test_golden_cloud_run_entries_parse():
    entry = json.loads((DATA / "cloud_run_job_succeeded.json").read_text())
    event = parse_job_event(entry)
    assert event.job_id == "crj.prod-etl-4c16g.prod-etl-4c16g-x7k2p" and event.state == LOG_SINK_STATE
    assert parse_job_event(json.loads((DATA / "cloud_run_job_failed.json").read_text())).job_id == event.job_id
    with pytest.raises(BadMessage, match="execution_name"):
        parse_job_event({**entry, "labels": {}})


@pytest.fixture
def mixed(stack_factory, tmp_path: Path) -> Iterator[tuple]:
    crfake, vfake = FakeCloudRun(), FakeVertex()
    crserver, vserver = serve_cloud_run(crfake), serve_vertex(vfake)
    stack = stack_factory(job_backend="vertex", stage_backends=json.dumps(MIXED), job_image="img:1",
                          region="us-central1",
                          cloud_run_api_endpoint=f"http://127.0.0.1:{crserver.server_address[1]}",
                          vertex_api_endpoint=f"http://127.0.0.1:{vserver.server_address[1]}")
    cfg = stack.dev.config
    topic = f"projects/{cfg.project}/topics/{cfg.topic('job-events')}"
    crrunner = ExecutionRunner(project=cfg.project, job_events_topic=topic, log_dir=tmp_path / "cloudrun",
                               module="lbtrain.noop_job")
    crrunner.attach(crfake)
    # The Vertex runner starts `python -m jobs.main ARGS`: a wrapper runs the no-op job with the same ARGS.
    wrapper = tmp_path / "noop-python"
    wrapper.write_text(f"#!/bin/sh\nshift 2\nexec {sys.executable} -m lbtrain.noop_job \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    vrunner = JobRunner(project=cfg.project, job_events_topic=topic, log_dir=tmp_path / "vertex",
                        python=str(wrapper))
    vrunner.attach(vfake)
    yield stack, crfake, vfake, crrunner
    crrunner.stop()
    vrunner.stop()
    crserver.shutdown()
    vserver.shutdown()


def test_a_run_mixes_cloud_run_and_vertex_and_completes_through_the_log_sink(mixed):
    stack, crfake, vfake, crrunner = mixed
    mr = stack.model_run()
    run_id = stack.api.start_run("ner", mr)["run_id"]
    run = stack.wait(run_id, timeout=90)
    assert run["status"] == "SUCCEEDED", run
    steps = {s["stage"]: s for s in run["steps"]}
    backends = {stage: steps[stage]["job"]["backend"] for stage in ("etl", "train", "evaluate", "deploy")}
    assert backends == {"etl": "cloudrun", "train": "vertex", "evaluate": "cloudrun", "deploy": "cloudrun"}
    assert len(vfake.jobs) == 1 and len(crfake.executions) == 3
    # One Cloud Run job per stage and size, created once; every completion came as a sink entry.
    assert sorted(j.rsplit("/", 1)[1].rsplit("-", 2)[1] for j in crfake.jobs) == ["deploy", "etl", "evaluate"]
    ends = [e for e in crrunner.sink_entries if "completed" in e["textPayload"]]
    assert len(ends) == 3
    # Text types train on Cloud Run too (the most specific pattern wins).
    run2 = stack.wait(stack.api.start_run("text_single_classification", stack.model_run())["run_id"], timeout=90)
    assert run2["status"] == "SUCCEEDED"
    assert {s["job"]["backend"] for s in run2["steps"]} == {"cloudrun"} and len(vfake.jobs) == 1


def test_a_failed_execution_fails_the_run_with_the_jobs_reason(mixed):
    stack, crfake, vfake, _ = mixed
    mr = stack.model_run()
    run_id = stack.api.start_run("ner", mr, params={"noop": {"fail": {"etl": [1]}}})["run_id"]
    run = stack.wait(run_id, timeout=60)
    assert run["status"] == "FAILED" and run["error"]["stage"] == "etl"
    assert "injected failure in etl attempt 1" in run["error"]["message"]
    assert "exit code 1" in run["error"]["message"]  # Cloud Run's own words come along
    assert stack.statuses(mr)[-1] == "FAILED"


def test_a_sink_entry_for_an_unknown_execution_is_a_no_op(mixed):
    stack, *_ = mixed
    entry = json.loads((DATA / "cloud_run_job_succeeded.json").read_text())
    entry["resource"]["labels"]["job_name"] = fresh_id("someone-else")
    assert handle_job_event(stack.deps, parse_job_event(entry)).startswith("no-op")


def test_the_reconciler_completes_an_execution_whose_sink_entry_was_lost(mixed):
    stack, crfake, _, crrunner = mixed
    crrunner.publish = False
    run_id = stack.api.start_run("ner", stack.model_run())["run_id"]
    name = stack.wait_for(lambda: next((n for n, e in crfake.executions.items() if e.get("completionTime")
                                        and run_id in e["template"]["containers"][0]["args"]), None),
                          what="etl execution ended")
    assert stack.api.get_run(run_id)["steps"][0]["state"] == "RUNNING"  # no event: nothing moved
    crrunner.publish = True
    actions = reconcile_once(stack.deps, at=d.now() + timedelta(seconds=7200))
    assert any("etl" in a for a in actions), actions
    run = stack.wait(run_id, timeout=90)
    assert run["status"] == "SUCCEEDED" and name.rsplit("/", 1)[1] in run["steps"][0]["job"]["id"]
