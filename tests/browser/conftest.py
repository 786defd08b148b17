"""Browser tests: Playwright driving Debian's Chromium (`.ci/run` apt-installs it; no browser is
ever downloaded) against the in-process local stack running the no-op job."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain.devstack import DevStack
from lbtrain.emulators import free_port
from tests.conftest import ARTIFACTS
from tests.integration.conftest import TOKEN, Stack, make_config

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("tests/browser need the playwright package (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        pytest.fail(f"tests/browser need Debian's Chromium at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)  # 2 shared cores: a poll or an action may take a few seconds
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A laptop-sized page; console errors and failed requests fail the test."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.set_default_timeout(15_000)
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    context.close()


def _start(emulator_hosts: dict[str, str], root: Path) -> DevStack:
    cfg = make_config(root, pubsub_emulator_host=emulator_hosts["PUBSUB_EMULATOR_HOST"],
                      firestore_emulator_host=emulator_hosts["FIRESTORE_EMULATOR_HOST"], job_python=sys.executable)
    return DevStack(cfg, port=free_port(), reconcile_interval=3600.0).start()


@pytest.fixture(scope="module")
def live_stack(emulator_hosts: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack (own project and deployment) for the tests of a module."""
    root = tmp_path_factory.mktemp("browser")
    dev = _start(emulator_hosts, root)
    try:
        yield Stack(dev, root)
    finally:
        dev.stop()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


__all__ = ["TOKEN"]
