"""The text tasks' one-pass ETL (text_rows.StreamingTextTask): text_multi_classification and ner stream
the same snapshot convert makes, on the golden exports and on messy ones (duplicates, rows without
labels, ids or text, bad splits and spans, unicode, a checklist that appears late, radios only);
SeenIds keeps ids compactly and never takes two distinct ids for one."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from jobs.tasks import ner, text_multi_classification, text_rows
from jobs.tasks.base import DatasetError
from tests.unit.text_stream_checks import assert_streams_like_convert

DATA = Path(__file__).resolve().parent.parent / "data"
MR = "mr-golden"
TEXTS = ("Barack Obama visited Paris", "Ça va à Zürich 🎉 avec Renée", "  ", "hello\u2028world 😀 New York",
         "@user loves #Paris (Texas)!!", "𝒳𝒴 Zed Tokyo")


def _golden(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").split("\n") if line.strip()]


def _label(rng: random.Random, kind: str, text: str, checklist: bool) -> Any:
    if rng.random() < 0.05:
        return "not a label"
    classifications: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    if kind == "radios" or (kind == "multi" and rng.random() < 0.4):
        for q in rng.sample(["sentiment", "tone"], rng.randint(0, 2)):
            classifications.append({"name": q, "radio_answer": rng.choice([{"name": "pos"}, {"name": "neg"}, {}])})
    if kind == "multi" and checklist and rng.random() < 0.7:
        answers = rng.sample(["food", "sports", "ünï"], rng.randint(0, 3))
        classifications.append({"name": rng.choice(["topics", "topics", "other"]),
                                "checklist_answers": [{"name": a} for a in answers]})
    if kind == "ner":
        for _ in range(rng.randint(0, 3)):
            start = rng.randint(-1, max(0, len(text) - 1))
            end = start + rng.randint(-1, 6)
            token = text[max(start, 0):end + 1] if rng.random() < 0.7 else "tok"
            objects.append({"name": rng.choice(["person", "loc", ""]), "annotation_kind": rng.choice(
                ["TextEntity", "TextEntity", "BBox"]), "location": {"start": start, "end": end, "token": token}})
    return {"annotations": {"classifications": classifications, "objects": objects}}


def messy_export(seed: int, n: int, kind: str, checklist_from: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        data_row_id = f"d{rng.randint(0, i)}" if rng.random() < 0.1 else ("" if rng.random() < 0.03 else f"d{i}")
        text = rng.choice(TEXTS) if rng.random() < 0.9 else rng.choice([None, 5, ""])
        data_row: dict[str, Any] = {"id": data_row_id, "row_data": text}
        if rng.random() < 0.3:
            data_row["global_key"] = f"gk{i}"
        run: dict[str, Any] = {"labels": [_label(rng, kind, text if isinstance(text, str) else "", i >= checklist_from)
                                          for _ in range(rng.choice([0, 1, 1, 2]))]}
        split = rng.choice(["TRAINING", "validation", "Test", "UNASSIGNED", None, "weird"])
        if split is not None:
            run["split"] = split
        rows.append({"data_row": data_row, "experiments": {"m": {"runs": {MR if rng.random() < 0.95 else "x": run}}}})
    return rows


@pytest.fixture()
def small_buffers(monkeypatch):
    """Rows held back spill to their file after 3, ids fold into compact keys after 5, URL chunks of 7."""
    monkeypatch.setattr(text_multi_classification, "HELD_IN_MEMORY", 3)
    monkeypatch.setattr(text_rows, "RECENT_IDS", 5)
    monkeypatch.setattr(text_rows, "URL_CHUNK", 7)


MULTI_PARAMS = ({}, {"unanswered": "skip"}, {"question": "topics"}, {"questions": ["tone", "sentiment"]})


@pytest.mark.parametrize("buffers", ["default", "small"])
def test_text_multi_streams_the_snapshot_convert_makes(tmp_path, request, buffers):
    if buffers == "small":
        request.getfixturevalue("small_buffers")
    task = text_multi_classification.TASK
    golden = _golden("export_text_multi.ndjson")
    assert_streams_like_convert(task, golden, "mr-golden", MULTI_PARAMS, tmp_path / "golden")
    assert_streams_like_convert(task, golden, "mr-radios", ({},), tmp_path / "golden-radios")
    for name, rows in {
        "messy": messy_export(1, 300, "multi"),
        "late-checklist": messy_export(2, 300, "multi", checklist_from=150),  # rows held back, then replayed
        "radios-only": messy_export(3, 300, "radios", checklist_from=10**9),  # held to the end
    }.items():
        assert_streams_like_convert(task, rows, MR, MULTI_PARAMS[:2], tmp_path / name)


def test_text_multi_decides_the_questions_as_convert_did(tmp_path, small_buffers):
    task = text_multi_classification.TASK
    late = task.convert(messy_export(2, 300, "multi", checklist_from=150), MR, {}, "", lambda *a, **k: None)
    assert late.label_map["mode"] == "checklist" and late.label_map["questions"] in (["topics"], ["other"])
    radios = task.convert(messy_export(3, 300, "radios", checklist_from=10**9), MR, {}, "", lambda *a, **k: None)
    assert radios.label_map["mode"] == "radios" and radios.label_map["questions"] == ["sentiment", "tone"]


def test_text_multi_streamed_failure_publishes_nothing(tmp_path, small_buffers):
    rows = messy_export(4, 40, "ner")  # entities only: no checklist, no radio
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="needs a checklist"):
        text_multi_classification.TASK.convert_to(iter(rows), MR, {}, str(out), lambda *a, **k: None)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("buffers", ["default", "small"])
def test_ner_streams_the_snapshot_convert_makes(tmp_path, request, buffers):
    if buffers == "small":
        request.getfixturevalue("small_buffers")
    assert_streams_like_convert(ner.TASK, _golden("export_ner.ndjson"), MR, ({},), tmp_path / "golden")
    for seed in (5, 6):
        assert_streams_like_convert(ner.TASK, messy_export(seed, 300, "ner"), MR, ({},), tmp_path / f"messy{seed}")


# --- SeenIds ----------------------------------------------------------------------------------------


def test_seen_ids_finds_every_repeat_across_folds():
    rng = random.Random(0)
    ids = [f"cl{rng.randint(0, 3000):08d}" for _ in range(10_000)]
    seen = text_rows.SeenIds(recent_max=64)
    got = []
    for i in range(0, len(ids), 37):
        got += seen.first_seen(ids[i:i + 37])
    expected, exact = [], set()
    for key in ids:
        expected.append(key not in exact)
        exact.add(key)
    assert got == expected
    assert len(seen) == len(exact)
    assert seen.hi.nbytes + seen.lo.nbytes == 16 * len(seen.hi)  # 16 bytes per folded id


def test_seen_ids_tells_apart_ids_whose_first_hash_collides(monkeypatch):
    """Only both 64-bit hashes equal make a repeat: ids colliding on the first are still new."""
    import numpy as np

    def keys(ids, n):
        ids = list(ids)
        return (np.zeros(n, dtype=np.int64),  # every id collides on hi
                np.fromiter((hash(k + "\x00") for k in ids), dtype=np.int64, count=n))

    monkeypatch.setattr(text_rows.SeenIds, "_keys", staticmethod(keys))
    seen = text_rows.SeenIds(recent_max=2)
    assert seen.first_seen(["a", "b", "c"]) == [True, True, True]
    assert seen.first_seen(["d", "a", "e", "c", "d"]) == [True, False, True, False, False]
    assert seen.first_seen(["b", "e", "f"]) == [False, False, True]
