"""The dashboard against a live local stack: runs appear and advance without a reload, a failed
run shows its error and stage, retry and cancel need the token, the model page charts the runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from lbtrain import storage
from lbtrain.api.dashview import fmt_duration, seconds_between
from tests.browser.helpers import (
    assert_accessible_basics,
    assert_no_horizontal_scroll,
    assert_not_reloaded,
    mark_no_reload,
    watch,
)
from tests.integration.conftest import TOKEN, Stack

pytestmark = pytest.mark.browser
MODEL_TYPE = "text_single_classification"


def start(stack: Stack, **noop: Any) -> str:
    return stack.api.start_run(MODEL_TYPE, stack.model_run(), params={"noop": noop})["run_id"]


def row_status(page: Any, run_id: str) -> str | None:
    row = page.locator(f'#runs-table tr[data-run-id="{run_id}"]')
    return row.get_attribute("data-status") if row.count() else None


def test_a_run_appears_and_advances_on_the_list_without_reload(live_stack: Stack, page: Any, artifacts: Path):
    page.goto(live_stack.dev.url + "/dashboard/")
    mark_no_reload(page)
    rows_before = page.locator("#runs-table tbody tr[data-run-id]").count()
    run_id = start(live_stack, sleep={"train": 3})  # created after the page loaded

    seen = watch(page, lambda: row_status(page, run_id), lambda s: s == "SUCCEEDED", 60, "the run to succeed")

    assert_not_reloaded(page)  # it appeared live
    assert page.locator("#runs-table tbody tr[data-run-id]").count() == rows_before + 1
    assert "RUNNING" in seen, seen  # and moved through its stages while we watched
    assert seen.index("RUNNING") < seen.index("SUCCEEDED")
    row = page.locator(f'#runs-table tr[data-run-id="{run_id}"]')
    assert MODEL_TYPE in row.inner_text() and "macro_f1 1.0000" in row.inner_text()
    assert page.locator("#runs-table tbody tr").first.get_attribute("data-run-id") == run_id  # newest first
    assert page.problems == []  # type: ignore[attr-defined]
    page.screenshot(path=str(artifacts / "dashboard-runs-list.png"), full_page=True)


def test_run_page_stage_timeline_updates_live(live_stack: Stack, page: Any, artifacts: Path):
    run_id = start(live_stack, sleep={"etl": 1, "train": 3})
    page.goto(f"{live_stack.dev.url}/dashboard/runs/{run_id}")
    mark_no_reload(page)

    def train_state() -> str | None:
        return page.locator('#stages tr[data-stage="train"]').get_attribute("data-state")

    seen = watch(page, train_state, lambda s: s == "SUCCEEDED", 60, "train to succeed")
    assert "RUNNING" in seen and seen.index("RUNNING") < seen.index("SUCCEEDED"), seen
    page.wait_for_selector("#run-status:text('SUCCEEDED')", timeout=60_000)
    assert_not_reloaded(page)

    states = {r.get_attribute("data-stage"): r.get_attribute("data-state")
              for r in page.locator("#stages tbody tr[data-stage]").all()}
    assert states == {"etl": "SUCCEEDED", "train": "SUCCEEDED", "evaluate": "SUCCEEDED", "deploy": "SUCCEEDED"}
    # The timeline shows the durations the step documents record (the job slept 3 s in train).
    steps = {s["stage"]: s for s in live_stack.api.get_run(run_id)["steps"]}
    for stage in ("etl", "train"):
        cells = page.locator(f'#stages tr[data-stage="{stage}"] td')
        expected = fmt_duration(seconds_between(steps[stage]["started_at"], steps[stage]["ended_at"]))
        assert cells.nth(3).inner_text() == expected
    assert seconds_between(steps["train"]["started_at"], steps["train"]["ended_at"]) >= 1
    assert page.locator("table.metrics").inner_text().count("1.0000") == 2  # accuracy, macro_f1
    assert "API call" in page.locator("#h-trigger + dl").inner_text() or "REST API" in page.content()
    # Reported to Labelbox just after the run ends: it shows up live too.
    expect(page.locator("#labelbox-history")).to_contain_text("COMPLETE", timeout=15_000)
    history = page.locator("#labelbox-history").inner_text()
    for status in ("EXPORTING_DATA", "PREPARING_DATA", "TRAINING_MODEL"):
        assert status in history
    # The local job's log is linked and served.
    log = page.request.get(f"{live_stack.dev.url}/dashboard/runs/{run_id}/steps/train/log")
    assert log.status == 200 and log.headers["content-type"].startswith("text/plain")
    assert_accessible_basics(page)
    assert page.problems == []  # type: ignore[attr-defined]
    page.screenshot(path=str(artifacts / "dashboard-run-page.png"), full_page=True)


def test_failed_run_shows_error_and_stage_then_retry_needs_the_token(live_stack: Stack, page: Any,
                                                                     artifacts: Path):
    run_id = start(live_stack, fail={"train": [1]})
    assert live_stack.wait(run_id)["status"] == "FAILED"
    page.goto(f"{live_stack.dev.url}/dashboard/runs/{run_id}")
    mark_no_reload(page)

    assert page.locator("#run-status").inner_text() == "FAILED"
    assert page.locator("#run-error .stage").inner_text() == "train"
    assert "injected failure in train attempt 1" in page.locator("#run-error .message").inner_text()
    assert page.locator('#stages tr[data-stage="train"]').get_attribute("data-state") == "FAILED"
    assert page.locator('#stages tr[data-stage="evaluate"]').get_attribute("data-state") == "PENDING"
    assert "FAILED" in page.locator("#labelbox-history").inner_text()
    assert_accessible_basics(page)  # the error's colours keep their contrast too
    page.screenshot(path=str(artifacts / "dashboard-run-failed.png"), full_page=True)

    result = page.locator("#action-result")
    page.get_by_role("button", name="Retry run").click()
    expect(result).to_contain_text("Enter the API token")

    page.get_by_label("API token").fill("not-the-token")
    page.get_by_role("button", name="Retry run").click()
    expect(result).to_have_text(re.compile(r"^Refused \(401\)"))
    assert "invalid API token" in result.inner_text()
    assert live_stack.api.get_run(run_id)["status"] == "FAILED"  # refused means nothing happened

    page.get_by_label("API token").fill(TOKEN)
    page.get_by_label("Remember for this tab").check()
    page.get_by_role("button", name="Retry run").click()
    expect(result).to_have_text(re.compile(r"^Retry accepted"))
    page.wait_for_selector("#run-status:text('SUCCEEDED')", timeout=60_000)
    assert_not_reloaded(page)
    assert page.locator("#run-error").count() == 0
    assert page.locator('#stages tr[data-stage="train"] td').nth(1).inner_text() == "2 on local"  # attempt and machine
    assert "train attempt 1" in page.locator("ul.attempts").inner_text()

    # The token lives in this tab's sessionStorage only: never in what the server sends.
    assert page.evaluate("sessionStorage.getItem('lbtrain.apiToken')") == TOKEN
    page.reload()
    assert page.get_by_label("API token").input_value() == TOKEN
    for path in (f"/dashboard/runs/{run_id}", f"/dashboard/api/runs/{run_id}", "/dashboard/",
                 "/dashboard/static/dashboard.js"):
        assert TOKEN not in page.request.get(live_stack.dev.url + path).text()
    # The browser logs the refused request itself; nothing else went wrong.
    assert [p for p in page.problems if "status of 401" not in p] == []  # type: ignore[attr-defined]


def test_cancel_with_the_token_ends_the_run(live_stack: Stack, page: Any):
    run_id = start(live_stack, sleep={"train": 60})
    page.goto(f"{live_stack.dev.url}/dashboard/runs/{run_id}")
    page.wait_for_selector('#stages tr[data-stage="train"][data-state="RUNNING"]', timeout=30_000)
    result = page.locator("#action-result")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Cancel run").click()
    expect(result).to_have_text(re.compile(r"^Cancel accepted"))
    page.wait_for_selector("#run-status:text('CANCELLED')", timeout=30_000)
    assert page.locator('#stages tr[data-stage="train"]').get_attribute("data-state") == "CANCELLED"
    # A second cancel is refused with the server's reason, shown in the page.
    page.get_by_role("button", name="Cancel run").click()
    expect(result).to_have_text(re.compile(r"^Refused \(409\)"))
    assert "already CANCELLED" in page.locator("#action-result").inner_text()


def test_model_page_shows_champion_and_metric_over_time(live_stack: Stack, page: Any, artifacts: Path):
    done = [r for r in live_stack.api.list_runs(model_type=MODEL_TYPE, limit=100)["runs"]
            if (r.get("metrics") or {}).get("macro_f1") is not None]
    assert len(done) >= 2, "the earlier tests of this module leave evaluated runs"
    champion = done[0]["run_id"]
    storage.write_json(storage.join(live_stack.dev.config.artifact_root, "models", MODEL_TYPE, "champion.json"),
                       {"run_id": champion, "metric": "macro_f1", "value": 1.0, "endpoint": "http://127.0.0.1:9/predict",
                        "model_run_id": done[0]["model_run_id"], "deployed_at": "2026-01-02T03:04:05Z"})
    page.goto(f"{live_stack.dev.url}/dashboard/models/{MODEL_TYPE}")
    assert champion in page.locator("#champion").inner_text()
    points = page.locator("svg.series circle.point")
    assert points.count() == len(done)
    assert page.locator(f'svg.series circle[data-run="{champion}"]').get_attribute("r") == "6"
    assert page.locator("#history tbody tr").count() == len(done)
    assert_accessible_basics(page)
    page.screenshot(path=str(artifacts / "dashboard-model-page.png"), full_page=True)


def test_phone_viewport_has_no_horizontal_scroll(live_stack: Stack, browser: Any, artifacts: Path):
    run_id = live_stack.api.list_runs(limit=1)["runs"][0]["run_id"]
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    try:
        phone = context.new_page()
        for path, shot in (("/dashboard/", "dashboard-runs-list-phone.png"),
                           (f"/dashboard/runs/{run_id}", "dashboard-run-page-phone.png"),
                           (f"/dashboard/models/{MODEL_TYPE}", None)):
            phone.goto(live_stack.dev.url + path)
            phone.wait_for_timeout(300)
            assert_no_horizontal_scroll(phone)
            if shot:
                phone.screenshot(path=str(artifacts / shot), full_page=True)
    finally:
        context.close()


def test_unknown_run_is_a_404_page(live_stack: Stack, page: Any):
    resp = page.goto(f"{live_stack.dev.url}/dashboard/runs/does-not-exist")
    assert resp.status == 404
    assert "not found" in page.get_by_role("alert").inner_text()
    assert json.loads(page.request.get(f"{live_stack.dev.url}/dashboard/api/runs/does-not-exist").text())["error"]


def test_webhook_run_shows_its_delivery_and_per_class_bars(live_stack: Stack, page: Any):
    status, answer = live_stack.webhook(live_stack.model_run(), delivery_id="delivery-for-the-dashboard")
    assert status == 200
    run_id = answer["run_id"]
    assert live_stack.wait(run_id)["status"] == "SUCCEEDED"
    per_class = {"cat": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 4},
                 "dog": {"precision": 0.5, "recall": 1.0, "f1": 0.25, "support": 2},
                 "<script>alert(1)</script>": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}}
    live_stack.deps.store.db.collection("runs").document(run_id).update({"metrics.per_class": per_class})
    page.goto(f"{live_stack.dev.url}/dashboard/runs/{run_id}")

    trigger = page.locator("#h-trigger + dl").inner_text()
    assert "Labelbox webhook" in trigger and "delivery-for-the-dashboard" in trigger
    bars = page.locator("svg.bars rect.bar")
    assert bars.count() == 3
    widths = [float(b.get_attribute("width")) for b in bars.all()]  # classes by name: <script>…, cat, dog
    assert widths[0] == 0.0 and widths[1] > widths[2] > 0  # f1 0, 0.667, 0.25
    assert widths[1] / widths[2] == pytest.approx(0.667 / 0.25, rel=0.01)
    assert page.locator("table.per-class tbody tr").count() == 3
    assert "<script>alert(1)</script>" in page.locator("table.per-class").inner_text()  # shown as text, escaped
    assert page.problems == []  # type: ignore[attr-defined]


def test_a_rules_queued_follow_up_shows_why_it_waits(live_stack: Stack, page: Any):
    """Labels arriving during a rule's run make a held follow-up run: the list and the run page say
    what it waits for and which project's labels started it; it starts on its own when the first ends."""
    from tests.integration.test_triggers import label, project, rule

    pid = project(live_stack)
    rule(live_stack, pid, min_labels=1, params={"noop": {"sleep": {"train": 4}}})
    first = label(live_stack, pid)["run_id"]
    follow_up = label(live_stack, pid)["run_id"]
    assert follow_up != first
    page.goto(f"{live_stack.dev.url}/dashboard/runs/{follow_up}")
    mark_no_reload(page)
    expect(page.locator("#run-waiting")).to_contain_text(f"queued behind run {first}")
    trigger = page.locator("#h-trigger + dl").inner_text()
    assert "retraining rule" in trigger and pid in trigger
    assert "not created yet" in page.locator("#h-summary + dl").inner_text()
    watch(page, lambda: page.locator("#run-status").inner_text(), lambda s: s == "SUCCEEDED", 90,
          "the follow-up run to start and succeed")
    assert page.locator("#run-waiting").count() == 0
    assert_not_reloaded(page)
    assert page.problems == []  # type: ignore[attr-defined]


def test_run_page_shows_the_training_progress_live(live_stack: Stack, page: Any, tmp_path: Path):
    gate = tmp_path / "let-train-end"
    run_id = start(live_stack, sleep={"etl": 2}, progress={"train": {"epochs": 3, "gate": str(gate)}})
    page.goto(f"{live_stack.dev.url}/dashboard/runs/{run_id}")
    mark_no_reload(page)
    expect(page.locator("#run-progress .progress-text")).to_contain_text(
        "train: epoch 3/3 loss 0.25 val accuracy 0.8", timeout=60_000)
    chart = page.locator("#run-progress svg.progress-chart")
    expect(chart).to_be_visible()
    assert chart.locator("circle.loss").count() == 3 and chart.locator("circle.value").count() == 3
    gate.write_text("go")
    page.wait_for_selector("#run-status:text('SUCCEEDED')", timeout=60_000)
    expect(page.locator("#run-progress")).to_have_count(0)  # the run ended: no progress any more
    assert_not_reloaded(page)
    assert page.problems == []  # type: ignore[attr-defined]  # no CSP violation from the inline SVG
    assert_accessible_basics(page)
