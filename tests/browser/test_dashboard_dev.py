"""`lbtrain dev` (a subprocess, as users run it) prints the dashboard's URL and serves it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lbtrain.emulators import free_port
from tests.e2e.conftest import dev_env, running_dev

pytestmark = pytest.mark.browser


def test_lbtrain_dev_prints_and_serves_the_dashboard(emulator_hosts: dict[str, str], tmp_path: Path, page: Any):
    port = free_port()
    with running_dev(tmp_path, port, dev_env(tmp_path, port, emulator_hosts), log_name="browser-dev.log") as dev:
        printed = re.search(r"dashboard: (\S+)", (tmp_path / "dev.log").read_text())
        assert printed and printed.group(1) == f"{dev.url}/dashboard/"
        page.goto(printed.group(1))
        assert page.get_by_role("heading", level=1).inner_text() == "Runs"
        assert page.locator("#runs-table").count() == 1
        assert page.problems == []  # type: ignore[attr-defined]
