"""JOB_MACHINES fallback lists (lbtrain/adapters/vertex_backend.py): parsing, the order, the options."""

from __future__ import annotations

import json

import pytest

from lbtrain.adapters.vertex_backend import Machine, machine_for, machines_for
from lbtrain.config import Config

LIST = {"image_*/train": [
    {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1, "strategy": "spot"},
    {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 1,
     "strategy": "flex-start", "max_wait_hours": 2},
    {"machine_type": "n1-standard-8"},
]}


def test_a_pattern_may_give_an_ordered_list():
    cfg = Config(job_machines=json.dumps(LIST))
    machines = machines_for(cfg, "image_single_classification", "train")
    assert [m.machine_type for m in machines] == ["g2-standard-8", "a2-highgpu-1g", "n1-standard-8"]
    assert machines[0].strategy == "SPOT" and machines[1].strategy == "FLEX_START"
    assert machines[1].max_wait_hours == 2
    assert machine_for(cfg, "image_single_classification", "train", 1) == machines[1]
    assert machine_for(cfg, "image_single_classification", "train", 7) == machines[2]  # past the end: the last
    assert machines_for(cfg, "ner", "train") == [Machine("n1-standard-4")]  # a single object is a list of one
    assert machines[0].label() == "g2-standard-8 + 1×NVIDIA_L4 (spot)"
    assert machines[1].label() == "a2-highgpu-1g + 1×NVIDIA_TESLA_A100 (flex-start)"
    assert machines[2].label() == "n1-standard-8"


@pytest.mark.parametrize(("value", "message"), [
    ({"*": []}, "non-empty list"),
    ({"*": ["n1-standard-4"]}, "machine object"),
    ({"*": [{"machine_type": "n1-standard-4", "strategy": "cheap"}]}, "strategy 'cheap'"),
    ({"*": [{"machine_type": "n1-standard-4", "spot": True}]}, "unknown keys"),
])
def test_bad_lists_are_clear_errors(value, message):
    with pytest.raises(ValueError, match=message):
        machines_for(Config(job_machines=json.dumps(value)), "ner", "train")
