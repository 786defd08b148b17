"""Export v2 → dataset snapshot for text_single_classification, against golden rows with edge cases."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from jobs.tasks import exportv2
from jobs.tasks.base import DatasetError, loads_jsonl, read_dataset, write_dataset
from jobs.tasks.text_single_classification import TASK
from lbtrain import fetch
from lbtrain.adapters.labelbox import FileLabelbox
from tests.unit.text_stream_checks import assert_streams_like_convert

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "export_text_single.ndjson"
MR = "mr-golden"


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def golden_rows(tmp_path: Path) -> list[dict[str, Any]]:
    """The golden export, with its file:// row pointing at a file in tmp_path (via FileLabelbox)."""
    (tmp_path / "review-12.txt").write_text("Flat, joyless and far too long.\n", encoding="utf-8")
    text = GOLDEN.read_text(encoding="utf-8").replace("__TMP__", str(tmp_path))
    run_dir = tmp_path / "labelbox" / "model_runs" / MR
    run_dir.mkdir(parents=True)
    (run_dir / "export.ndjson").write_text(text, encoding="utf-8")
    return list(FileLabelbox(tmp_path / "labelbox").export_rows(MR))


@pytest.fixture()
def converted(tmp_path: Path):
    return TASK.convert(golden_rows(tmp_path), MR, {}, str(tmp_path / "out"), _quiet)


def test_examples_splits_and_targets(converted) -> None:
    got = {e["data_row_id"]: (e["split"], e["target"]) for e in converted.examples}
    assert got == {
        "dr01": ("train", "positive"),
        "dr02": ("train", "negative"),  # "TRAINING"
        "dr03": ("test", "positive"),  # "Test"
        "dr04": ("validation", "negative"),
        "dr05": ("validation", "positive"),  # "Validation"
        "dr11": ("train", "positive"),
        "dr12": ("test", "negative"),  # text fetched from a file:// URL
        "dr15": ("train", "positive"),  # checklist first, second radio question ignored
        "dr17": ("test", "positive"),  # conflicting labels: the first wins
        "dr18": ("validation", "negative"),  # run found under another model id
    }
    assert converted.label_map == {"question": "sentiment", "classes": ["negative", "positive"]}


def test_text_content(converted) -> None:
    by_id = {e["data_row_id"]: e for e in converted.examples}
    assert by_id["dr11"]["text"] == "Ça a été un film magnifique\u2028— 素晴らしい 🎬"
    assert by_id["dr12"]["text"] == "Flat, joyless and far too long.\n"
    assert by_id["dr01"]["global_key"] == "gk-dr01"
    assert "global_key" not in by_id["dr04"]


def test_nothing_is_dropped_silently(converted) -> None:
    skipped = converted.stats["skipped"]
    assert {k: v["count"] for k, v in skipped.items()} == {
        "no_split": 1,
        "unassigned_split": 1,
        "unknown_split": 1,
        "no_answer": 1,
        "no_label": 1,
        "not_in_model_run": 1,
        "no_text": 1,
        "duplicate_data_row": 1,
        "fetch_failed": 1,
    }
    assert skipped["no_split"]["data_row_ids"] == ["dr06"]
    assert skipped["no_answer"]["data_row_ids"] == ["dr09"]
    assert skipped["fetch_failed"]["data_row_ids"] == ["dr19"]
    assert converted.stats["notes"]["conflicting_answers"]["data_row_ids"] == ["dr17"]
    assert converted.stats["rows"] == 19
    # every exported row is accounted for exactly once
    assert len(converted.examples) + sum(v["count"] for v in skipped.values()) == 19


def test_predict_only_rows_keep_text_and_reason(converted) -> None:
    got = {r["data_row_id"]: (r["split"], r["target"], r["reason"]) for r in converted.predict_only}
    assert got == {
        "dr06": ("unassigned", "positive", "no_split"),
        "dr07": ("unassigned", "negative", "unassigned_split"),
        "dr08": ("unassigned", "positive", "unknown_split"),
        "dr09": ("train", None, "no_answer"),
        "dr10": ("test", None, "no_label"),
    }
    assert len(converted.all_rows()) == 15


def test_stats_counts_per_class_and_split(converted) -> None:
    assert converted.stats["per_class"] == {
        "negative": {"train": 1, "validation": 2, "test": 1},
        "positive": {"train": 3, "validation": 1, "test": 2},
    }
    assert converted.stats["per_split"] == {"train": 4, "validation": 3, "test": 3}


def test_snapshot_round_trip_keeps_unicode(tmp_path: Path, converted) -> None:
    out = str(tmp_path / "snap")
    write_dataset(out, converted)
    back = read_dataset(out)
    assert back.examples == converted.examples
    assert back.predict_only == converted.predict_only
    assert back.label_map == converted.label_map


def test_explicit_question_param(tmp_path: Path) -> None:
    ds = TASK.convert(golden_rows(tmp_path), MR, {"question": "topic"}, str(tmp_path), _quiet)
    assert [e["data_row_id"] for e in ds.examples] == ["dr15"]
    assert ds.label_map == {"question": "topic", "classes": ["comedy"]}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "has no data rows"),
        ([{"data_row": {"id": "x", "row_data": "t"}, "experiments": {}}], "belongs to model run"),
        (
            [
                {
                    "data_row": {"id": "x", "row_data": "t"},
                    "experiments": {"m": {"runs": {MR: {"split": "training", "labels": []}}}},
                }
            ],
            "no radio classification",
        ),
    ],
)
def test_unusable_exports_fail_clearly(rows: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        TASK.convert(rows, MR, {}, "/unused", _quiet)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("training", ("train", None)),
        ("TRAINING", ("train", None)),
        ("Train", ("train", None)),
        ("VALIDATION", ("validation", None)),
        ("valid", ("validation", None)),
        ("Test", ("test", None)),
        (None, (None, "no_split")),
        ("", (None, "no_split")),
        ("UNASSIGNED", (None, "unassigned_split")),
        ("holdout", (None, "unknown_split")),
    ],
)
def test_parse_split(raw: Any, expected: tuple[str | None, str | None]) -> None:
    assert exportv2.parse_split(raw) == expected


def test_is_url_only_for_single_url_values() -> None:
    assert exportv2.is_url("https://example.com/a.txt")
    assert exportv2.is_url("file:///tmp/a.txt")
    assert not exportv2.is_url("https://example.com is where I read this review")
    assert not exportv2.is_url("gs://bucket/a.txt")


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Fails the first request of each path with 503, then serves UTF-8 text."""

    seen: set[str] = set()

    def do_GET(self) -> None:  # noqa: N802
        if self.path not in self.seen:
            self.seen.add(self.path)
            self.send_response(503)
            self.end_headers()
            return
        body = f"text of {self.path} – ok".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_fetch_over_http_retries_transient_errors() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        values = [f"{base}/a", "inline text", f"{base}/b", "http://127.0.0.1:9/nothing-listens-here"]
        loopback = fetch.FetchPolicy(allow_loopback=True)  # the test-only allowance for 127.0.0.1
        out = exportv2.resolve_texts(values, timeout=2, retries=2, backoff=0.01, policy=loopback)
        assert out[0] == "text of /a – ok"
        assert out[1] == "inline text"
        assert out[2] == "text of /b – ok"
        assert isinstance(out[3], exportv2.FetchError)
    finally:
        server.shutdown()
        server.server_close()


def test_dataset_jsonl_is_one_object_per_line(tmp_path: Path, converted) -> None:
    write_dataset(str(tmp_path), converted)
    raw = (tmp_path / "dataset.jsonl").read_text(encoding="utf-8")
    assert raw.count("\n") == len(converted.examples)
    assert loads_jsonl(raw) == converted.examples
    assert json.loads((tmp_path / "label_map.json").read_text())["question"] == "sentiment"


def test_no_examples_message_says_why(tmp_path: Path) -> None:
    """The common mistake: labels exist but no split was assigned in the model run."""
    rows = [
        {
            "data_row": {"id": f"d{i}", "row_data": f"text {i}"},
            "experiments": {
                "m": {
                    "runs": {
                        MR: {
                            "labels": [
                                {
                                    "annotations": {
                                        "classifications": [
                                            {"name": "q", "radio_answer": {"name": "yes"}},
                                        ]
                                    }
                                }
                            ]
                        }
                    }
                }
            },
        }
        for i in range(3)
    ]
    ds = TASK.convert(rows, MR, {}, str(tmp_path), _quiet)
    with pytest.raises(DatasetError) as err:
        TASK.validate(ds, {"train": 1, "validation": 1, "test": 1})
    assert str(err.value) == (
        "no labeled examples with a train/validation/test split in model run 'mr-golden' "
        "(rows skipped: 3 no_split)"
    )
    assert len(ds.predict_only) == 3  # still predicted by evaluate


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_streamed_convert_writes_the_same_snapshot_as_convert(tmp_path, monkeypatch, chunk):
    """The etl job's one-pass path (convert_to: the export walked once, rows written as they are made,
    URLs fetched `chunk` rows at a time) gives the files, summary and validation that convert does."""
    from jobs.tasks import text_rows

    monkeypatch.setattr(text_rows, "URL_CHUNK", chunk)
    assert_streams_like_convert(TASK, golden_rows(tmp_path), MR, ({}, {"question": "sentiment"}), tmp_path)


def test_streamed_convert_publishes_nothing_when_it_fails(tmp_path):
    row = {"data_row": {"id": "a", "row_data": "x"}, "experiments": {"m": {"runs": {MR: {"split": "TRAINING"}}}}}
    with pytest.raises(DatasetError, match="no radio classification is answered"):
        TASK.convert_to(iter([row]), MR, {}, str(tmp_path / "out"), _quiet)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
