"""`python -m jobs.main` etl → train → evaluate → deploy for ner on a tiny WNUT-16 subset, in subprocesses."""

from __future__ import annotations

import json

import pytest

from jobs import serving
from tests.unit.test_text_multi_jobs_main import Pipeline, nested_array


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    p = Pipeline(tmp_path_factory.mktemp("ner"), "ner", limit=160)
    yield p
    serving.stop_all(str(p.artifacts))


def test_etl_train_evaluate_deploy(pipe: Pipeline) -> None:
    etl = pipe.ok("r1", "etl")
    assert etl["examples"] == 160 and etl["classes"] == 10 and etl["misaligned_spans"] == 0
    assert etl["entities"] == sum(sum(v.values()) for v in pipe.summary["per_class"].values())
    train = pipe.ok("r1", "train", {"c1": [0.1], "c2": [0.05], "max_iterations": 60})
    assert train["train_size"] == 112 and train["c1"] == 0.1
    progress = json.loads((pipe.out("r1", "train") / "progress.json").read_text())
    assert (progress["unit"], progress["done"], progress["total"]) == ("CRF fit", 2, 2)  # one c1/c2, then the refit
    assert progress["metric"] == "entity_f1" and "refit" in progress["note"]
    metrics = pipe.ok("r1", "evaluate")
    assert {"entity_f1", "entity_precision", "entity_recall", "per_type"} <= set(metrics)
    assert metrics["test_size"] == 24 and metrics["predicted_rows"] == 160 and not nested_array(metrics)
    rows = pipe.uploaded("r1")
    texts = {
        json.loads(line)["data_row_id"]: json.loads(line)["text"]
        for line in (pipe.out("r1", "etl") / "dataset.jsonl").open(encoding="utf-8")
    }
    spans = [r for r in rows if "location" in r]
    assert spans and len(rows) == metrics["uploaded_rows"] == len(spans) + 10 * 24
    for r in spans:
        text = texts[r["dataRow"]["id"]][r["location"]["start"] : r["location"]["end"] + 1]
        assert text and text == text.strip()
    deploy = pipe.ok("r1", "deploy")
    assert deploy["deployed"] is True
    reply = serving.predict(deploy["endpoint"], ["Heading to New York with Justin Bieber", {"text": "ok"}])
    assert len(reply["predictions"]) == 2 and "entities" in reply["predictions"][0]
    serving.stop_all(str(pipe.artifacts))
