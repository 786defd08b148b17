"""What the browser tests assert on a page: no reload happened, a11y basics, contrast, overflow."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# WCAG 2.x contrast of every visible text element against its effective background.
CONTRAST_JS = """
() => {
  function rgba(s) { const m = s.match(/[\\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; }
  function lum(c) { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
                    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); }
  function bg(el) { for (; el; el = el.parentElement) { const c = rgba(getComputedStyle(el).backgroundColor);
                    if (c[3] > 0.5) return c; } return [255, 255, 255, 1]; }
  const bad = [];
  for (const el of document.querySelectorAll("body *")) {
    if (!el.offsetParent && getComputedStyle(el).position !== "fixed") continue;
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest("svg")) continue;
    const r = el.getBoundingClientRect(); if (r.width < 2 || r.height < 2) continue;
    const fg = rgba(getComputedStyle(el).color), b = bg(el);
    const hi = Math.max(lum(fg), lum(b)), lo = Math.min(lum(fg), lum(b));
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 4.5) {
      bad.push(el.tagName + "." + el.className + " '" + el.textContent.trim().slice(0, 30) + "' " + ratio.toFixed(2));
    }
  }
  return bad;
}
"""

# Form controls without an accessible name (a <label for>, aria-label or aria-labelledby).
UNLABELLED_JS = """
() => [...document.querySelectorAll("input:not([type=hidden]), select, textarea, button")]
  .filter(el => !((el.labels && el.labels.length) || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")
                  || (el.tagName === "BUTTON" && el.textContent.trim())))
  .map(el => el.outerHTML.slice(0, 80))
"""

OVERFLOW_JS = "() => [document.documentElement.scrollWidth, window.innerWidth]"


def mark_no_reload(page: Any) -> None:
    """A marker on window: a reload or navigation would drop it."""
    page.evaluate("window.__lbtrainNoReload = 'still here'")


def assert_not_reloaded(page: Any) -> None:
    assert page.evaluate("window.__lbtrainNoReload") == "still here", "the page was reloaded"


def watch(page: Any, read: Callable[[], Any], until: Callable[[Any], bool], timeout: float,
          what: str) -> list[Any]:
    """Sample `read()` until `until(value)`; returns the distinct values seen, in order."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if not seen or seen[-1] != value:
            seen.append(value)
        if until(value):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; saw {seen}")
        page.wait_for_timeout(100)


def assert_accessible_basics(page: Any) -> None:
    assert page.evaluate("document.documentElement.lang") == "en"
    for role in ("banner", "navigation", "main", "contentinfo"):
        assert page.get_by_role(role).count() >= 1, f"no {role} landmark"
    assert page.locator("h1").count() == 1
    assert page.evaluate(UNLABELLED_JS) == []
    assert page.evaluate(CONTRAST_JS) == []
    for svg in page.locator("svg").all():
        assert svg.get_attribute("role") == "img" and svg.get_attribute("aria-label")


def assert_no_horizontal_scroll(page: Any) -> None:
    width, viewport = page.evaluate(OVERFLOW_JS)
    assert width <= viewport, f"page is {width}px wide in a {viewport}px viewport"
