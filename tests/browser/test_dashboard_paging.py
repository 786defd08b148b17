"""Paging and filters over many runs (written straight into Firestore through the store's client):
every run shows up exactly once, newest first, whatever the filters; plus a11y basics."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from lbtrain import domain as d
from tests.browser.helpers import assert_accessible_basics, assert_no_horizontal_scroll
from tests.integration.conftest import Stack

pytestmark = pytest.mark.browser
N = 120
TYPES = ["text_single_classification", "ner", "bounding_box"]
STATUSES = [d.SUCCEEDED, d.FAILED, d.RUNNING, d.SUCCEEDED, d.CANCELLED]


@pytest.fixture(scope="module")
def many(live_stack: Stack) -> list[dict[str, Any]]:
    """N run documents with distinct creation times (and a few ties), newest first."""
    db = live_stack.deps.store.db
    base = d.now() - timedelta(days=1)
    runs = []
    batch = db.batch()
    for i in range(N):
        run_id = f"r{i:03d}-{d.new_run_id()[:6]}"
        at = base + timedelta(seconds=(i // 2) * 7)  # pairs share a timestamp: the cursor must break ties
        doc = d.initial_run(run_id, TYPES[i % 3], f"mr-{i % 8}", "m", {}, {"source": "api", "delivery_id": ""},
                            "etl", at)
        doc["status"] = STATUSES[i % len(STATUSES)]
        if doc["status"] == d.SUCCEEDED:
            doc.update(stage="deploy", finished_at=at + timedelta(seconds=90), metrics={"macro_f1": 0.5 + i / 1000})
        batch.set(db.collection("runs").document(run_id), doc)
        runs.append(doc)
    batch.commit()
    # Firestore orders ties by document name, descending like the timestamp.
    return sorted(runs, key=lambda r: (r["created_at"], r["run_id"]), reverse=True)


def collect_pages(page: Any, url: str) -> list[list[str]]:
    """Follow 'Older runs' from `url` to the last page; the run ids shown on each page."""
    page.goto(url)
    pages = []
    while True:
        pages.append([r.get_attribute("data-run-id") for r in page.locator("#runs-table tbody tr[data-run-id]").all()])
        older = page.get_by_role("link", name="Older runs")
        if not older.count():
            return pages
        older.click()
        page.wait_for_load_state()
        assert len(pages) < 50, "paging does not end"


def test_pages_hold_every_run_once_newest_first(live_stack: Stack, many: list[dict[str, Any]], page: Any):
    pages = collect_pages(page, live_stack.dev.url + "/dashboard/")
    assert [len(p) for p in pages] == [25, 25, 25, 25, 20]
    shown = [run_id for p in pages for run_id in p]
    assert shown == [r["run_id"] for r in many]  # no duplicate, no omission, in order
    # From a later page, "Newest" leads back to the first.
    page.get_by_role("link", name="Newest").click()
    assert page.locator("#runs-table tbody tr[data-run-id]").first.get_attribute("data-run-id") == many[0]["run_id"]


def test_filters_through_the_form_and_across_pages(live_stack: Stack, many: list[dict[str, Any]], page: Any):
    page.goto(live_stack.dev.url + "/dashboard/?limit=10")
    page.get_by_label("Status").select_option("SUCCEEDED")
    page.get_by_label("Model type").select_option("ner")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_load_state()
    assert "status=SUCCEEDED" in page.url and "model_type=ner" in page.url and "limit=10" in page.url
    pages = collect_pages(page, page.url)
    expected = [r["run_id"] for r in many if r["status"] == d.SUCCEEDED and r["model_type"] == "ner"]
    assert len(expected) > 10  # really more than one page
    assert [run_id for p in pages for run_id in p] == expected
    assert all(len(p) <= 10 for p in pages)

    page.goto(live_stack.dev.url + "/dashboard/")
    page.get_by_label("Model run").fill("mr-3")
    page.get_by_label("Status").select_option("FAILED")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_load_state()
    rows = page.locator("#runs-table tbody tr[data-run-id]")
    expected = [r["run_id"] for r in many if r["model_run_id"] == "mr-3" and r["status"] == d.FAILED]
    assert [r.get_attribute("data-run-id") for r in rows.all()] == expected
    assert all(r.get_attribute("data-status") == "FAILED" for r in rows.all())

    page.goto(live_stack.dev.url + "/dashboard/?model_run_id=nothing-here")
    assert "No runs match these filters" in page.locator("#runs-table").inner_text()


def test_bad_filter_is_explained(live_stack: Stack, page: Any):
    resp = page.goto(live_stack.dev.url + "/dashboard/?status=BOGUS")
    assert resp.status == 400
    assert "unknown status 'BOGUS'" in page.get_by_role("alert").inner_text()


def test_list_page_accessibility_and_phone_layout(live_stack: Stack, many: list[dict[str, Any]], page: Any,
                                                  browser: Any, artifacts: Path):
    page.goto(live_stack.dev.url + "/dashboard/")
    assert_accessible_basics(page)
    assert page.get_by_role("search").count() == 1
    assert page.get_by_role("navigation", name="Pages").count() == 1
    page.screenshot(path=str(artifacts / "dashboard-runs-list-paged.png"), full_page=True)
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    try:
        phone = context.new_page()
        phone.goto(live_stack.dev.url + "/dashboard/")
        assert_no_horizontal_scroll(phone)
        assert phone.locator("#runs-table tbody tr[data-run-id]").count() == 25
    finally:
        context.close()
