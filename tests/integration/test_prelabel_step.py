"""The prelabel step in the pipeline (no-op jobs): which runs get it, bad settings refused, and a
failed prelabel leaving the deployed run SUCCEEDED with the step's error."""

from __future__ import annotations

import pytest

from lbtrain.client import ApiError
from tests.conftest import fresh_id

MODEL_TYPE = "text_single_classification"


def test_bad_prelabel_settings_are_refused_and_change_nothing(stack):
    mr = stack.model_run()
    for params, words in [({"prelabel": True}, "needs a project_id"),
                          ({"prelabel": {"project_id": "p1", "random_share": 2}}, "random_share"),
                          ({"prelabel": {"project_id": "p1", "colour": "red"}}, "unknown keys"),
                          ({"prelabel": {"project_id": "../etc"}}, "not a valid id"),
                          ({"prelabel": "yes"}, "true, false or an object")]:
        with pytest.raises(ApiError) as bad:
            stack.api.start_run(MODEL_TYPE, mr, params=params)
        assert bad.value.status == 400 and words in str(bad.value), (params, str(bad.value))
    assert stack.api.list_runs(model_run_id=mr)["runs"] == []


def test_runs_without_prelabel_keep_four_stages(stack):
    run = stack.api.start_run(MODEL_TYPE, stack.model_run())
    done = stack.wait(run["run_id"])
    assert done["status"] == "SUCCEEDED"
    assert [s["stage"] for s in done["steps"]] == ["etl", "train", "evaluate", "deploy"]
    assert "prelabel" not in done and "prelabel" not in done["params"]


def test_a_run_asking_for_prelabel_ends_with_it(stack):
    project = fresh_id("proj")
    run = stack.api.start_run(MODEL_TYPE, stack.model_run(),
                              params={"prelabel": {"project_id": project, "min_confidence": {"pos": 0.9, "*": 0.7}}})
    done = stack.wait(run["run_id"])
    assert done["status"] == "SUCCEEDED"
    assert [s["stage"] for s in done["steps"]] == ["etl", "train", "evaluate", "deploy", "prelabel"]
    settings = done["params"]["prelabel"]
    assert settings["project_id"] == project and settings["min_confidence"] == {"pos": 0.9, "*": 0.7}
    assert settings["random_share"] == 0.1 and settings["batch_size"] == 1000
    # The prelabel job got the deploy step's outputs upstream and the model's digest slot.
    assert done["steps"][-1]["state"] == "SUCCEEDED"


def test_a_failed_prelabel_does_not_fail_the_deployed_run(stack):
    mr = stack.model_run()
    params = {"prelabel": {"project_id": fresh_id("proj")}, "noop": {"fail": {"prelabel": [1]}}}
    run = stack.api.start_run(MODEL_TYPE, mr, params=params)
    done = stack.wait(run["run_id"])
    assert done["status"] == "SUCCEEDED", done
    step = done["steps"][-1]
    assert step["stage"] == "prelabel" and step["state"] == "FAILED"
    assert "injected failure in prelabel attempt 1" in step["error"]
    assert "injected failure in prelabel" in done["prelabel"]["error"]
    assert done["error"] is None
    assert stack.statuses(mr)[-1] == "COMPLETE"
