"""The dashboard's pure view helpers: durations, the stage timeline, metric tables, SVG charts,
and the bounded Labelbox status history kept on the run document."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from lbtrain import domain as d
from lbtrain.api import dashview as v
from lbtrain.reporting import HISTORY_LIMIT, appended

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_fmt_duration_units():
    assert [v.fmt_duration(s) for s in (None, 0.25, 5, 59.4, 65, 3600 + 240, 3 * 86400 + 4 * 3600)] == [
        "—", "250 ms", "5 s", "59 s", "1 m 05 s", "1 h 04 m", "3 d 4 h"]


def test_times_accept_datetimes_and_iso_strings():
    assert v.seconds_between("2026-03-01T12:00:00Z", at(90)) == 90
    assert v.seconds_between(at(10), at(5)) == 0.0  # clock skew never shows negative time
    assert v.seconds_between(None, at(1)) is None and v.as_datetime("not a time") is None
    assert v.fmt_time(at(0)) == "2026-03-01 12:00:00 UTC" and v.iso(at(0)) == "2026-03-01T12:00:00Z"


def step(stage: str, index: int, state: str, attempt: int = 1, **times: float) -> dict:
    s = d.initial_step(stage, index, T0)
    s.update(state=state, attempt=attempt, **{k: at(x) for k, x in times.items()})
    return s


def test_stage_rows_queued_and_running_durations():
    run = d.initial_run("r1", "ner", "mr", "", {}, {}, "etl", T0)
    run.update(status=d.RUNNING, stage="train")
    steps = [
        step("etl", 0, d.SUCCEEDED, launched_at=2, started_at=3, ended_at=30),
        step("train", 1, d.RUNNING, launched_at=31, started_at=40),
        step("evaluate", 2, d.PENDING),
    ]
    rows = v.stage_rows(run, steps, now=at(100))
    etl, train, evaluate = rows
    assert (etl.queued, etl.running) == ("3 s", "27 s")  # created → job running; running → end
    assert (train.queued, train.running, train.current) == ("10 s", "1 m 00 s", True)  # previous end → running; to now
    assert (evaluate.queued, evaluate.running) == ("—", "—")  # not ready yet: nothing counts


def test_stage_rows_retried_attempt_counts_from_its_claim_and_pending_ready_step_ticks():
    run = d.initial_run("r1", "ner", "mr", "", {}, {}, "etl", T0)
    run.update(status=d.QUEUED, stage="train")
    steps = [step("etl", 0, d.SUCCEEDED, started_at=1, ended_at=10),
             step("train", 1, d.RUNNING, attempt=2, launched_at=500, started_at=502)]
    assert v.stage_rows(run, steps, now=at(510))[1].queued == "2 s"
    steps[1] = step("train", 1, d.PENDING)
    assert v.stage_rows(run, steps, now=at(25))[1].queued == "15 s"  # waiting since etl ended
    run["status"] = d.FAILED
    assert v.stage_rows(run, steps, now=at(25))[1].queued == "—"  # a finished run waits for nothing


def test_a_rule_run_shows_its_modelrun_step_first_queued_from_its_release():
    run = d.initial_run("r1", "ner", "", "m1", {}, {"source": "label_webhook"}, "etl", T0)
    run.update(status=d.RUNNING, stage=d.MODELRUN, released_at=at(600), waiting="creating the Labelbox model run")
    steps = [step("etl", 0, d.PENDING), step("train", 1, d.PENDING),
             step(d.MODELRUN, -1, d.RUNNING, launched_at=601, started_at=603)]
    modelrun, etl, train = v.stage_rows(run, steps, now=at(700))
    assert (modelrun.stage, modelrun.current) == (d.MODELRUN, True)
    assert (modelrun.queued, modelrun.running) == ("3 s", "1 m 37 s")  # held before the release: not its queue
    assert (etl.queued, etl.stage) == ("—", "etl")  # ready only once the model run exists
    held = {**run, "status": d.QUEUED, "stage": "etl", "released_at": None}
    assert v.stage_rows(held, steps[:2], now=at(60))[0].queued == "1 m 00 s"  # a held run's first stage waits


def test_per_class_table_and_bar_metric():
    metrics = {"accuracy": 0.9, "per_class": {"cat": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 4},
                                              "dog": {"precision": 0.5, "recall": 1.0, "f1": 0.667, "support": 2}}}
    columns, rows = v.per_class(metrics)
    assert columns == ["precision", "recall", "f1", "support"] and [n for n, _ in rows] == ["cat", "dog"]
    assert v.bar_metric(columns) == "f1"
    assert v.per_class({"accuracy": 1.0}) == ([], [])
    assert v.scalar_metrics(metrics) == [("accuracy", "0.9000")]


def test_svg_bars_scale_escape_and_parse():
    svg = str(v.svg_bars([("cat", 0.5), ("<dog & co>", 1.0), ("bird", None), ("big", 7.0)], title="per-class f1"))
    root = ElementTree.fromstring(svg)  # well-formed XML: labels are escaped
    assert root.get("role") == "img" and root.get("aria-label") == "per-class f1"
    bars = [e for e in root.iter("{http://www.w3.org/2000/svg}rect") if e.get("class") == "bar"]
    widths = [float(b.get("width")) for b in bars]
    assert len(bars) == 3  # no bar for a missing value
    assert widths[0] * 2 == widths[1] == widths[2]  # proportional, clamped at the maximum
    assert "&lt;dog &amp; co&gt;" in svg and "n/a" in svg
    assert "style=" not in svg  # presentation attributes only (CSP has no 'unsafe-inline')


def test_svg_series_orders_points_in_time_and_marks_the_champion():
    points = [(at(100), 0.8, "b"), (at(0), 0.5, "a"), (at(200), 0.9, "c")]
    svg = str(v.svg_series(points, title="macro_f1 over time", champion_run="b"))
    root = ElementTree.fromstring(svg)
    circles = [c for c in root.iter("{http://www.w3.org/2000/svg}circle")]
    assert [c.get("data-run") for c in circles] == ["a", "b", "c"]
    xs = [float(c.get("cx")) for c in circles]
    ys = [float(c.get("cy")) for c in circles]
    assert xs == sorted(xs) and xs[1] - xs[0] == xs[2] - xs[1]  # time on x, evenly here
    assert ys[0] > ys[1] > ys[2]  # higher value, higher on screen
    assert [c.get("r") for c in circles] == ["4", "6", "4"]
    assert re.search(r"<polyline points=\"[\d., ]+\"", svg)
    empty = ElementTree.fromstring(str(v.svg_series([], title="nothing")))
    assert not list(empty.iter("{http://www.w3.org/2000/svg}circle"))


def test_svg_by_labels_places_runs_by_their_labels():
    points = [(460, 0.78, "second"), (400, 0.74, "first"), (1000, 0.81, "<third>")]
    svg = str(v.svg_by_labels(points, title="macro_f1 by labels", champion_run="first"))
    root = ElementTree.fromstring(svg)
    circles = list(root.iter("{http://www.w3.org/2000/svg}circle"))
    assert [c.get("data-labels") for c in circles] == ["400", "460", "1000"]
    assert [c.get("data-run") for c in circles] == ["first", "second", "<third>"]  # escaped in the markup
    xs = [float(c.get("cx")) for c in circles]
    assert xs[0] < xs[1] < xs[2] and abs((xs[1] - xs[0]) / (xs[2] - xs[0]) - 60 / 600) < 1e-6  # labels on x
    assert [c.get("r") for c in circles] == ["6", "4", "4"]
    assert "400 labels" in svg and "1000 labels" in svg
    assert not list(ElementTree.fromstring(str(v.svg_by_labels([], title="none"))).iter(
        "{http://www.w3.org/2000/svg}circle"))


def test_labelbox_history_dedupes_repeats_and_stays_bounded():
    def entry(status: str, reported: bool | None = True, i: int = 0) -> dict:
        return {"status": status, "error_message": None, "metadata": {"i": str(i)}, "at": at(i), "reported": reported}

    h = appended([], entry("EXPORTING_DATA"))
    assert appended(h, entry("EXPORTING_DATA")) is h  # a redelivered report adds nothing
    undelivered = appended(h, entry("TRAINING_MODEL", reported=False, i=1))
    assert appended(undelivered, entry("TRAINING_MODEL", reported=False, i=1)) is undelivered
    assert appended(undelivered, entry("TRAINING_MODEL", i=1))[-1]["reported"] is True  # delivered later
    # A new run's first entry is written before it is sent (reported None): only a failed send marks it.
    pending = appended(h, entry("PREPARING_DATA", reported=None, i=2))
    assert appended(pending, entry("PREPARING_DATA", reported=True, i=2)) is not pending
    assert appended(pending, entry("PREPARING_DATA", reported=False, i=2))[-1]["reported"] is False
    assert appended(undelivered, entry("TRAINING_MODEL", reported=None, i=1)) is undelivered
    long = []
    for i in range(HISTORY_LIMIT + 7):
        long = appended(long, entry("TRAINING_MODEL", i=i))
    assert len(long) == HISTORY_LIMIT and long[-1]["metadata"]["i"] == str(HISTORY_LIMIT + 6)
