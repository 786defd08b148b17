"""Pure rules of lbtrain/domain.py: job names, retry stage, headline metrics."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from lbtrain import domain as d

AT = datetime(2024, 11, 26, 12, 0, tzinfo=UTC)
RUN_ID = "3f2a9c1e7b5d4a60"


# -- job_name ----------------------------------------------------------------------------

def test_job_name_plain() -> None:
    assert d.job_name("dev", RUN_ID, "etl", 1) == f"dev-{RUN_ID}-etl-a1"


def test_job_name_is_deterministic() -> None:
    assert d.job_name("prod", RUN_ID, "train", 2) == d.job_name("prod", RUN_ID, "train", 2)


def test_job_name_is_lowercase_and_label_safe() -> None:
    name = d.job_name("My.Team Prod", "ABCDEF0123456789", "Train", 1)
    assert name == name.lower()
    assert re.fullmatch(r"[a-z0-9_-]+", name), name
    assert name.endswith("-abcdef0123456789-train-a1")


@pytest.mark.parametrize("deployment", [
    "a" * 63,
    "a" * 200,
    "team-" * 20,
    "x" * 40 + "-" + "y" * 40,
    "Very-Long-Deployment-Name-For-The-Research-Group-Staging-Environment",
])
@pytest.mark.parametrize("stage,attempt", [("etl", 1), ("evaluate", 12), ("deploy", 999)])
def test_job_name_long_deployment_keeps_run_stage_attempt(deployment: str, stage: str, attempt: int) -> None:
    name = d.job_name(deployment, RUN_ID, stage, attempt)
    assert len(name) <= 63, (len(name), name)
    assert name == name.lower()
    assert name.endswith(f"-{RUN_ID}-{stage}-a{attempt}"), name
    assert not name.startswith("-")
    assert "--" not in name.replace("-" + RUN_ID, "")  # no doubled dash where the prefix was trimmed
    assert name == d.job_name(deployment, RUN_ID, stage, attempt)


def test_job_names_differ_by_attempt_stage_and_run_even_when_trimmed() -> None:
    dep = "z" * 100
    names = {d.job_name(dep, run, stage, attempt)
             for run in (RUN_ID, "0" * 16) for stage in ("etl", "train") for attempt in (1, 2)}
    assert len(names) == 8


def test_job_name_exactly_63_is_not_trimmed() -> None:
    tail = f"-{RUN_ID}-etl-a1"
    dep = "d" * (63 - len(tail))
    name = d.job_name(dep, RUN_ID, "etl", 1)
    assert len(name) == 63 and name == dep + tail


def test_new_run_id_shape() -> None:
    ids = {d.new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


# -- retry_stage -------------------------------------------------------------------------

def _steps(*states: str) -> list[dict]:
    stages = ("etl", "train", "evaluate", "deploy")
    out = []
    for i, (stage, state) in enumerate(zip(stages, states, strict=False)):
        step = d.initial_step(stage, i, AT)
        step["state"] = state
        out.append(step)
    return out


def test_retry_stage_is_the_first_failed_step() -> None:
    assert d.retry_stage(_steps(d.SUCCEEDED, d.FAILED, d.PENDING, d.PENDING))["stage"] == "train"


def test_retry_stage_follows_pipeline_order_not_list_order() -> None:
    steps = list(reversed(_steps(d.SUCCEEDED, d.SUCCEEDED, d.CANCELLED, d.PENDING)))
    assert d.retry_stage(steps)["stage"] == "evaluate"


def test_retry_stage_skips_skipped_steps() -> None:
    assert d.retry_stage(_steps(d.SUCCEEDED, d.SKIPPED, d.FAILED, d.PENDING))["stage"] == "evaluate"


def test_retry_stage_of_a_run_that_never_started_is_the_first() -> None:
    assert d.retry_stage(_steps(d.PENDING, d.PENDING, d.PENDING, d.PENDING))["stage"] == "etl"


def test_retry_stage_none_when_everything_succeeded() -> None:
    assert d.retry_stage(_steps(d.SUCCEEDED, d.SUCCEEDED, d.SUCCEEDED, d.SUCCEEDED)) is None
    assert d.retry_stage([]) is None


# -- headline ----------------------------------------------------------------------------

def test_headline_keeps_only_scalar_numbers() -> None:
    metrics = {"accuracy": 0.9, "n_test": 40, "passed": True, "per_class": {"a": 1.0}, "confusion": [[1, 0]],
               "model": "x", "none": None}
    assert d.headline(metrics) == {"accuracy": 0.9, "n_test": 40}


def test_headline_empty() -> None:
    assert d.headline({}) == {}


# -- small values ------------------------------------------------------------------------

def test_job_ref_round_trip() -> None:
    ref = d.JobRef(backend="local", id="j1", name="dev-r-etl-a1", url="file:///x")
    assert d.JobRef.from_dict(ref.to_dict()) == ref
    assert d.JobRef.from_dict({"backend": "vertex", "id": "1", "name": "n"}).url == ""


@pytest.mark.parametrize("state,terminal", [
    ("PENDING", False), ("RUNNING", False), ("SUCCEEDED", True), ("FAILED", True), ("CANCELLED", True),
    ("EXPIRED", True), ("PARTIALLY_SUCCEEDED", True),
])
def test_job_status_terminal(state: str, terminal: bool) -> None:
    assert d.JobStatus(state).terminal is terminal


def test_initial_run_and_step_shapes() -> None:
    run = d.initial_run(RUN_ID, "text_single_classification", "mr", "m", {}, {"source": "api"}, "etl", AT)
    assert run["status"] == d.QUEUED and run["stage"] == "etl" and run["created_at"] == AT
    assert run["finished_at"] is None and run["outputs"] == {}
    step = d.initial_step("train", 1, AT)
    assert step["state"] == d.PENDING and step["attempt"] == 1 and step["index"] == 1 and step["job"] is None


def test_history_entry_keeps_the_attempt_facts() -> None:
    step = d.initial_step("train", 1, AT)
    step.update(state=d.FAILED, error="boom", attempt=2, metrics={"x": 1})
    entry = d.history_entry(step)
    assert entry["attempt"] == 2 and entry["state"] == d.FAILED and entry["error"] == "boom"
    assert "metrics" not in entry


def test_now_is_timezone_aware_utc() -> None:
    assert d.now().tzinfo is not None and d.now().utcoffset().total_seconds() == 0


def test_a_held_rule_run_launches_nothing_until_released() -> None:
    held = {"model_run_id": "", "waiting": "queued behind run a1"}
    assert d.is_held(held)
    assert d.launch_blocker(held, d.MODELRUN) == "run is waiting: queued behind run a1"
    assert d.launch_blocker(held, "etl") == "run is waiting: queued behind run a1"


def test_a_released_rule_run_launches_only_its_modelrun_step_until_it_has_a_model_run() -> None:
    released = {"model_run_id": "", "waiting": "creating the Labelbox model run", "released_at": datetime.now(UTC)}
    assert not d.is_held(released)
    assert d.launch_blocker(released, d.MODELRUN) == ""
    assert d.launch_blocker(released, "etl") == "run has no Labelbox model run yet"
    started = {**released, "model_run_id": "mr1", "waiting": None}
    assert d.launch_blocker(started, "etl") == "" and not d.is_held({"model_run_id": "mr1"})


def test_the_model_run_name_is_the_same_for_every_attempt() -> None:
    assert d.model_run_name("dev", RUN_ID) == f"dev-{RUN_ID}"
