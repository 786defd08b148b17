"""clip_error: Labelbox shows at most 255 characters of a failure; keep the useful ones (a log link)."""

from __future__ import annotations

import pytest

from lbtrain.adapters.labelbox import MAX_ERROR_MESSAGE, clip_error

LINK = "https://console.cloud.google.com/logs/query;query=labels.run_id%3D%22r-42%22;duration=P1D?project=demo"


def test_short_messages_are_kept_on_one_line() -> None:
    assert clip_error("etl failed:\n  class 'cat'\thas 0 examples") == "etl failed: class 'cat' has 0 examples"
    assert clip_error(ValueError("bad")) == "bad"
    text = "x" * MAX_ERROR_MESSAGE
    assert clip_error(text) == text


@pytest.mark.parametrize("filler", [30, 100, 1000, 100_000])
def test_a_trailing_log_link_survives_and_the_prose_is_cut_in_the_middle(filler: int) -> None:
    message = "train failed: out of memory while fitting " + "detail " * filler + "; last words. logs: " + LINK
    clipped = clip_error(message)
    assert len(clipped) <= MAX_ERROR_MESSAGE
    assert clipped.endswith("logs: " + LINK)  # the link whole, and the words that introduce it
    assert clipped.startswith("train failed: out of memory")  # what failed
    assert clipped.count("…") == 1


def test_a_link_in_the_middle_survives_too() -> None:
    message = "deploy failed, see " + LINK + " for the job log; " + "then it went on and on " * 20
    clipped = clip_error(message)
    assert len(clipped) <= MAX_ERROR_MESSAGE and LINK in clipped and clipped.startswith("deploy failed, see ")


def test_links_that_cannot_all_fit_keep_the_latest() -> None:
    first = "https://example.com/first/" + "a" * 120
    last = "https://example.com/last/" + "b" * 120
    clipped = clip_error(f"step one {first} step two {last} done")
    assert len(clipped) <= MAX_ERROR_MESSAGE and last in clipped and first not in clipped


def test_prose_pieces_are_cut_evenly_not_one_wiped_out() -> None:
    message = "start " + "z" * 200 + " see https://a.example/1 and " + "q" * 100 + " and https://b.example/" + "r" * 150
    clipped = clip_error(message)
    assert len(clipped) <= MAX_ERROR_MESSAGE
    assert clipped.startswith("start zzz") and "https://a.example/1 and qqq" in clipped
    assert clipped.endswith("https://b.example/" + "r" * 150)


@pytest.mark.parametrize("message", ["x" * 1000, "y " * 500, "https://example.com/" + "p" * 400,
                                     "gs://bucket/" + "o" * 300 + " tail", "…" * 300])
def test_anything_ends_up_within_the_limit(message: str) -> None:
    clipped = clip_error(message)
    assert len(clipped) <= MAX_ERROR_MESSAGE and clipped[:5] == " ".join(message.split())[:5]


def test_without_links_the_end_is_cut() -> None:
    clipped = clip_error("injected failure in train attempt 1: " + "x" * 500)
    assert clipped.startswith("injected failure in train attempt 1: xxx") and clipped.endswith("x…")
    assert len(clipped) == MAX_ERROR_MESSAGE
