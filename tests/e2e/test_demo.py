"""`lbtrain demo`: Ctrl-C mid-run stops everything it started; without `--exit` the stack (and its
dashboard) stays up after the results until Ctrl-C, which then stops everything too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def live_processes_mentioning(needles: list[str]) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(n in cmdline for n in needles):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path: Path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "API_TOKEN", "LABELBOX_WEBHOOK_SECRET")}
    proc = subprocess.Popen([sys.executable, "-m", "lbtrain.cli", "demo", "--exit", "--limit", "400",
                             "--model-types", "text_single_classification"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    deadline = time.monotonic() + 180
    try:
        for line in proc.stdout:
            lines.append(line)
            if "RUNNING" in line:
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert any("RUNNING" in line for line in lines), "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = "".join(lines) + out
    assert proc.returncode == 130, output
    assert "interrupted" in output and "stopping the local stack" in output

    assert_nothing_left(tmp_path)


def assert_nothing_left(tmp_path: Path) -> None:
    """`lbtrain dev` logged its stop, and no emulator or job process of this demo is alive."""
    dev_log = (tmp_path / ".lbtrain/demo/dev.log").read_text()
    ports = re.findall(r"emulator 127\.0\.0\.1:(\d+)", dev_log)
    assert len(ports) == 2, dev_log
    assert "lbtrain dev: stopping" in dev_log
    needles = [str(tmp_path), *(f"--port={p}" for p in ports)]
    deadline = time.monotonic() + 20
    while (left := live_processes_mentioning(needles)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], left


def test_the_demo_stays_up_with_its_dashboard_until_ctrl_c(tmp_path: Path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "API_TOKEN", "LABELBOX_WEBHOOK_SECRET")}
    proc = subprocess.Popen([sys.executable, "-m", "lbtrain.cli", "demo", "--limit", "400",
                             "--model-types", "text_single_classification"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "stays up" in line or "stopping the local stack" in line:
                break
        output = "".join(lines)
        assert "the stack stays up" in output, output
        assert "all runs SUCCEEDED" in output, output
        # The labeling loop: label webhooks fired the rule, whose run pre-labeled the unlabeled half.
        loop = re.search(r"run (\w+) SUCCEEDED: pre-labeled (\d+) of 200 unlabeled rows .* prioritised 200 ", output)
        assert loop and int(loop.group(2)) > 0, output
        dashboard = re.search(r"dashboard (http://127\.0\.0\.1:\d+/dashboard/)", lines[-1]).group(1)
        run_page = re.search(re.escape(dashboard) + r"runs/[\w-]+", output).group(0)
        assert proc.poll() is None, output  # the results are printed and the demo is still running
        for url in (dashboard, run_page):
            with urllib.request.urlopen(url, timeout=30) as resp:
                assert resp.status == 200 and "SUCCEEDED" in resp.read().decode()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = "".join(lines) + out
    assert proc.returncode == 0, output
    assert "stopping the local stack" in output and "stopped" in out
    assert_nothing_left(tmp_path)
