"""Which runs get the prelabel step, and with which settings (lbtrain/prelabel.py, model_options)."""

from __future__ import annotations

import json

import pytest

from lbtrain import model_options
from lbtrain.prelabel import DEFAULTS, PRELABEL, PrelabelError, normalize, resolve, stages_for, with_settings

RULE = {"source": "label_webhook", "project_id": "projA"}
API = {"source": "api"}


def test_a_rule_run_prelabels_its_project_by_default():
    settings = resolve({}, RULE)
    assert settings == {**DEFAULTS, "enabled": True, "project_id": "projA"}
    assert stages_for(("etl", "deploy"), settings) == ("etl", "deploy", PRELABEL)


def test_other_runs_do_not_unless_asked():
    assert resolve({}, API) is None
    assert stages_for(("etl", "deploy"), None) == ("etl", "deploy")
    assert resolve({"prelabel": {"project_id": "p2", "batch_size": 50}}, API)["batch_size"] == 50


def test_the_run_parameter_wins_over_model_options_and_the_rule_default():
    assert resolve({"prelabel": False}, RULE) is None
    assert resolve({"prelabel": {"enabled": False}}, RULE, options=True) is None
    assert resolve({}, RULE, options={"random_share": 0.3})["random_share"] == 0.3
    # A rule's run keeps its project when the parameter tunes only the thresholds.
    assert resolve({"prelabel": {"min_confidence": 0.9}}, RULE)["project_id"] == "projA"
    assert resolve({"prelabel": {"project_id": "other"}}, RULE)["project_id"] == "other"


def test_model_options_alone_without_a_project_adds_no_step():
    assert resolve({}, API, options=True) is None
    assert resolve({}, API, options={"project_id": "p9"})["project_id"] == "p9"


@pytest.mark.parametrize(("raw", "words"), [
    ({"min_confidence": 1.5}, "min_confidence"),
    ({"min_confidence": {}}, "1 to 10,000 classes"),
    ({"min_confidence": {"cat": "high"}}, "min_confidence['cat']"),
    ({"random_share": -0.1}, "random_share"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"max_rows": 10**9}, "max_rows"),
    ({"enabled": "yes"}, "enabled"),
    ({"project_id": "a/b"}, "not a valid id"),
    ({"surprise": 1}, "unknown keys ['surprise']"),
    (3, "true, false or an object"),
])
def test_bad_settings_name_the_key(raw, words):
    with pytest.raises(PrelabelError) as err:
        normalize(raw)
    assert words in str(err.value)


def test_asked_for_without_a_project_is_refused():
    with pytest.raises(PrelabelError, match="needs a project_id"):
        resolve({"prelabel": True}, API)


def test_the_settings_are_stored_in_the_params_the_job_reads():
    settings = resolve({"prelabel": True}, RULE)
    params = with_settings({"prelabel": True, "epochs": 3}, settings)
    assert params == {"epochs": 3, "prelabel": settings}
    assert with_settings({"prelabel": False, "epochs": 3}, None) == {"epochs": 3}


def test_model_options_accept_and_check_prelabel():
    raw = json.dumps({"ner": {"prelabel": {"min_confidence": 0.8}}})
    assert model_options.for_type(raw, "ner").prelabel == {"min_confidence": 0.8}
    assert model_options.for_type(raw, "bounding_box").prelabel is None
    with pytest.raises(ValueError, match=r"MODEL_OPTIONS\['ner'\].prelabel.random_share"):
        model_options.parse(json.dumps({"ner": {"prelabel": {"random_share": 3}}}))
