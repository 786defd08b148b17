"""infra/terraform passes checkov, as a security review of a real deployment would run it.

Every failed check is either fixed or skipped inline on its resource with a reason
(`#checkov:skip=CKV_…:<reason>`): a new failure, or a skip without a reason, fails this test.

checkov runs from its own virtualenv, not the project's: it pins `packaging<24`, `networkx<2.7` and
`tabulate<0.10`, older than what the dev environment has (torch, pytest, google-cloud-aiplatform need
the newer ones), so installing it into `.[dev]` would downgrade them. The environment is built on first
use (`pip install checkov==<CHECKOV>`, needs the package index once) and cached under
LBTRAIN_TOOL_CACHE (default ~/.cache/lbtrain/tools), like tests/image_env.py caches image environments.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "infra" / "terraform"
CHECKOV = "3.3.30"
SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")


def checkov_python() -> Path:
    """The cached environment's python, built (once, under a lock) when missing."""
    root = Path(os.environ.get("LBTRAIN_TOOL_CACHE") or Path.home() / ".cache" / "lbtrain" / "tools")
    root.mkdir(parents=True, exist_ok=True)
    env_dir = root / f"checkov-{CHECKOV}-py{sys.version_info.major}.{sys.version_info.minor}"
    python = env_dir / "bin" / "python"
    with open(root / f"checkov-{CHECKOV}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (env_dir / ".complete").exists():
            shutil.rmtree(env_dir, ignore_errors=True)
            venv.create(env_dir, with_pip=True)
            result = subprocess.run([str(python), "-m", "pip", "install", "-q", f"checkov=={CHECKOV}"],
                                    capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, f"could not install checkov=={CHECKOV}:\n{result.stderr[-3000:]}"
            (env_dir / ".complete").touch()
    return python


def run_checkov(directory: Path) -> tuple[int, dict]:
    """checkov's exit code and JSON report (offline: --skip-download, no platform calls)."""
    result = subprocess.run([str(checkov_python()), "-m", "checkov.main", "-d", str(directory), "--framework",
                             "terraform", "-o", "json", "--skip-download"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "LOG_LEVEL": "ERROR", "BC_SKIP_MAPPING": "TRUE"})
    assert result.stdout.strip(), f"checkov printed no report:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    assert isinstance(report, dict) and report.get("check_type") == "terraform", str(report)[:500]
    return result.returncode, report


@pytest.fixture(scope="module")
def report() -> tuple[int, dict]:
    return run_checkov(TF_DIR)


def test_no_failed_check(report):
    code, rep = report
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in rep["results"]["failed_checks"]]
    assert not failed, "checkov failures (fix them, or skip on the resource with a reason):\n" + "\n".join(
        map(str, failed))
    assert code == 0
    summary = rep["summary"]
    assert summary["parsing_errors"] == 0 and summary["passed"] > 0 and summary["checkov_version"] == CHECKOV
    print(f"checkov {CHECKOV}: {summary['passed']} passed, {summary['failed']} failed, "
          f"{summary['skipped']} skipped")


def test_every_skip_gives_its_reason(report):
    _, rep = report
    for check in rep["results"]["skipped_checks"]:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) >= 30, f"{check['check_id']} on {check['resource']} is skipped without a reason"
    for path in sorted(TF_DIR.glob("*.tf")):
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                match = SKIP.search(line)
                assert match and (match.group(2) or "").strip(), f"{path.name}: skip without a reason: {line}"


def test_a_new_failure_would_fail(tmp_path):
    """The same files without their skips fail: this test cannot pass on a report that ignores them."""
    copy = tmp_path / "terraform"
    copy.mkdir()
    skipped = set()
    for path in TF_DIR.glob("*.tf"):
        lines = path.read_text().splitlines(keepends=True)
        skipped |= {m.group(1) for line in lines if (m := SKIP.search(line))}
        (copy / path.name).write_text("".join(line for line in lines if not SKIP.search(line)))
    assert skipped, "no skips to remove"
    code, rep = run_checkov(copy)
    assert code != 0
    assert {c["check_id"] for c in rep["results"]["failed_checks"]} == skipped
