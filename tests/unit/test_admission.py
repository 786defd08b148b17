"""lbtrain/admission.py, the pure parts: which queued runs take a slot, why the others wait, node-hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lbtrain import admission as a
from lbtrain import domain as d
from lbtrain.config import Config, from_env, per_type_limits, to_env

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def queue(*items: tuple[str, str]) -> list[dict[str, str]]:
    return [{"run_id": run_id, "model_type": model_type} for run_id, model_type in items]


def test_deployment_limit_admits_in_arrival_order_and_counts_runs_ahead():
    p = a.plan({"r0": "ner"}, queue(("r1", "ner"), ("r2", "ner"), ("r3", "ner"), ("r4", "ner")),
               a.Limits(max_active=2), 0.0, "2026-12")
    assert p.admitted == ["r1"]
    assert list(p.waiting) == ["r2", "r3", "r4"]
    assert p.waiting["r2"] == "waiting for a slot: 0 runs ahead (2 of 2 runs active in the deployment)"
    assert p.waiting["r3"].startswith("waiting for a slot: 1 run ahead")
    assert p.waiting["r4"].startswith("waiting for a slot: 2 runs ahead")


def test_type_limit_does_not_hold_back_other_types():
    limits = a.Limits(max_active=3, per_type={"bounding_box": 1})
    p = a.plan({"b0": "bounding_box"}, queue(("b1", "bounding_box"), ("t1", "ner"), ("t2", "ner"), ("t3", "ner")),
               limits, 0.0, "2026-12")
    assert p.admitted == ["t1", "t2"]
    assert p.waiting == {
        "b1": "waiting for a slot: 0 runs ahead (1 of 1 bounding_box runs active)",
        "t3": "waiting for a slot: 1 run ahead (3 of 3 runs active in the deployment)",
    }


def test_star_is_every_other_types_limit():
    limits = a.Limits(per_type={"*": 1, "ner": 2})
    assert limits.type_limit("ner") == 2 and limits.type_limit("bounding_box") == 1 and limits.enabled
    p = a.plan({}, queue(("n1", "ner"), ("n2", "ner"), ("n3", "ner"), ("b1", "bounding_box"), ("b2", "bounding_box")),
               limits, 0.0, "2026-12")
    assert p.admitted == ["n1", "n2", "b1"] and list(p.waiting) == ["n3", "b2"]


def test_budget_used_up_holds_every_queued_run():
    p = a.plan({}, queue(("r1", "ner"), ("r2", "ner")), a.Limits(monthly_node_hours=10), 10.25, "2026-12")
    assert p.admitted == []
    assert p.waiting["r1"] == "waiting for the monthly budget: 10.2 of 10 node-hours used in 2026-12 (0 runs ahead)"
    assert p.waiting["r2"].endswith("(1 run ahead)")
    assert a.plan({}, queue(("r1", "ner")), a.Limits(monthly_node_hours=10), 9.9, "2026-12").admitted == ["r1"]


def test_no_limits_admit_everything_and_mean_admission_is_off():
    assert not a.Limits().enabled and not a.enabled(Config())
    assert a.plan({"x": "ner"}, queue(("r1", "ner"), ("r2", "ner")), a.Limits(), 0.0, "m").admitted == ["r1", "r2"]


def test_node_hours_count_every_attempt_with_a_job():
    job = {"backend": "local", "id": "j", "name": "j"}
    steps = [
        {"started_at": T0, "ended_at": T0 + timedelta(minutes=30), "job": job,
         "attempts": [{"started_at": T0 - timedelta(hours=1), "ended_at": T0, "job": job}]},
        {"started_at": None, "ended_at": T0, "job": None, "attempts": []},  # failed before a job existed
        {"started_at": T0, "ended_at": None, "job": job},  # still running: not counted yet
    ]
    assert a.node_hours(steps) == pytest.approx(1.5)
    assert a.month_of(T0) == "2026-12"


def test_limits_from_the_environment():
    cfg = from_env({"LBTRAIN_MAX_ACTIVE_RUNS": "4", "LBTRAIN_MAX_ACTIVE_RUNS_PER_TYPE": '{"bounding_box": 1, "*": 2}',
                    "LBTRAIN_MONTHLY_NODE_HOURS": "250.5"})
    limits = a.Limits.from_config(cfg)
    assert limits == a.Limits(4, {"bounding_box": 1, "*": 2}, 250.5)
    assert from_env(to_env(cfg)) == cfg
    assert per_type_limits("3") == {"*": 3} and per_type_limits("") == {}
    for bad in ("-1", "x", '{"ner": -1}', '{"ner": "2"}', "[1]"):
        with pytest.raises(ValueError, match="LBTRAIN_MAX_ACTIVE_RUNS_PER_TYPE"):
            from_env({"LBTRAIN_MAX_ACTIVE_RUNS_PER_TYPE": bad})
    with pytest.raises(ValueError, match="LBTRAIN_MAX_ACTIVE_RUNS"):
        from_env({"LBTRAIN_MAX_ACTIVE_RUNS": "-2"})
    with pytest.raises(ValueError, match="LBTRAIN_MONTHLY_NODE_HOURS"):
        from_env({"LBTRAIN_MONTHLY_NODE_HOURS": "lots"})
    with pytest.raises(ValueError, match="LBTRAIN_MAX_DELIVERY_ATTEMPTS"):
        from_env({"LBTRAIN_MAX_DELIVERY_ATTEMPTS": "4"})


def test_a_run_waiting_for_admission_may_not_launch():
    run = {"model_run_id": "mr1", "admission": d.ADMISSION_QUEUED, "waiting": "waiting for a slot: 2 runs ahead"}
    assert d.launch_blocker(run, "etl") == "run is waiting: waiting for a slot: 2 runs ahead"
    assert d.launch_blocker({**run, "admission": d.ADMISSION_ADMITTED}, "etl") == ""


def test_cli_shows_why_a_run_waits():
    from lbtrain.cli import describe_run

    run = {"run_id": "r1", "status": d.QUEUED, "model_type": "ner", "model_run_id": "mr1", "steps": [],
           "waiting": "waiting for a slot: 3 runs ahead (2 of 2 runs active in the deployment)"}
    assert describe_run(run).splitlines()[1] == f"  {run['waiting']}"
    assert "waiting" not in describe_run({**run, "status": d.SUCCEEDED})
