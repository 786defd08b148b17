"""WNUT-16 reference datasets for ner and text_multi_classification (lbtrain.datasets.wnut)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lbtrain import datasets
from lbtrain.adapters.labelbox import FileLabelbox
from lbtrain.datasets import wnut
from lbtrain.datasets.common import NoBuilder

CONLL = "@bob\tO\nvisit\tO\nNew\tB-geo-loc\nYork\tI-geo-loc\n\t\nGo\tO\nLakers\tB-sportsteam\n\t\nnothing\tO\n\t\n"


def test_parse_conll_offsets_and_entity_at_the_end() -> None:
    tweets = wnut.parse_conll(CONLL)
    assert [t.text for t in tweets] == ["@bob visit New York", "Go Lakers", "nothing"]
    assert tweets[0].entities == (("geo-loc", 11, 18),) and tweets[0].text[11 : 18 + 1] == "New York"
    assert tweets[1].entities == (("sportsteam", 3, 8),) and len(tweets[1].text) == 9
    assert tweets[2].entities == () and tweets[2].types == frozenset()


def test_available() -> None:
    avail = datasets.available()
    assert avail["ner"] == ["wnut16"] and avail["text_multi_classification"] == ["wnut16"]


def test_real_file_parses() -> None:
    tweets = wnut.load_tweets()
    assert len(tweets) == 2394
    for t in tweets[:200]:
        for _, s, e in t.entities:
            assert t.text[s : e + 1] == t.text[s : e + 1].strip() and t.text[s : e + 1]


def test_build_ner_small(tmp_path: Path) -> None:
    summary = datasets.build("ner", str(tmp_path), "mr-n", limit=120, model_id="mx")
    assert summary["rows"] == 120 and summary["per_split"] == {"train": 84, "validation": 18, "test": 18}
    assert len(summary["classes"]) == 10
    assert all(n >= 1 for per in summary["per_class"].values() for n in per.values())  # every type in every split
    rows = list(FileLabelbox(tmp_path).export_rows("mr-n"))
    assert len({r["data_row"]["id"] for r in rows}) == 120
    n_entities = 0
    for row in rows:
        assert re.fullmatch(r"c[0-9a-z]{24}", row["data_row"]["id"])
        run = row["experiments"]["mx"]["runs"]["mr-n"]
        assert run["split"] in ("training", "validation", "test")
        (label,) = run["labels"]
        for obj in label["annotations"]["objects"]:
            loc = obj["location"]
            assert obj["annotation_kind"] == "TextEntity"
            assert row["data_row"]["row_data"][loc["start"] : loc["end"] + 1] == loc["token"]
            n_entities += 1
    assert n_entities == sum(sum(per.values()) for per in summary["per_class"].values())


def test_build_text_multi_small_is_deterministic(tmp_path: Path) -> None:
    a = datasets.build("text_multi_classification", str(tmp_path / "a"), "mr", limit=100, seed=1)
    datasets.build("text_multi_classification", str(tmp_path / "b"), "mr", limit=100, seed=1)
    path = Path("model_runs") / "mr" / "export.ndjson"
    assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    assert a["question"] == "entity_types" and a["no_entity_rows"] > 0
    rows = list(FileLabelbox(tmp_path / "a").export_rows("mr"))
    checklists = [c for r in rows for lab in r["experiments"]["lbtrain-reference-model"]["runs"]["mr"]["labels"]
                  for c in lab["annotations"]["classifications"]]
    assert checklists and all(c["name"] == "entity_types" and c["checklist_answers"] for c in checklists)
    assert len(checklists) == 100 - a["no_entity_rows"]  # no entity: a label with nothing checked


def test_full_split_is_stratified() -> None:
    tweets = wnut.load_tweets()
    splits = wnut.assign_splits(tweets, seed=0)
    sizes = {s: sum(1 for v in splits.values() if v == s) for s in ("train", "validation", "test")}
    assert sizes == {"train": 1676, "validation": 359, "test": 359}
    for etype in {et for t in tweets for et in t.types}:
        per = {s: sum(1 for t in tweets if etype in t.types and splits[t.index] == s) for s in sizes}
        assert per["test"] >= 4 and per["validation"] >= 4, (etype, per)


def test_bad_arguments() -> None:
    with pytest.raises(NoBuilder):
        wnut.build("bounding_box", "/tmp/x", "mr")
    with pytest.raises(NoBuilder):
        wnut.build("ner", "/tmp/x", "mr", dataset="conll")
    with pytest.raises(ValueError):
        wnut.build("ner", "/tmp/x", "mr", limit=0)
