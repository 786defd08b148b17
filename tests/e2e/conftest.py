"""The e2e suite's stack: `lbtrain dev` as a subprocess on the session's emulators."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain.client import Client
from lbtrain.emulators import free_port
from tests.conftest import ARTIFACTS, fresh_id

TOKEN = "e2e-api-token-0123456789abcdef"
SECRET = "e2e-webhook-secret-0123456789abcdef"
LBTRAIN = [sys.executable, "-m", "lbtrain.cli"]


class Dev:
    def __init__(self, root: Path, env: dict[str, str], port: int):
        self.root, self.env, self.port = root, env, port
        self.url = f"http://127.0.0.1:{port}"
        self.api = Client(self.url, token=TOKEN)
        self.labelbox_dir = root / "labelbox"

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([*LBTRAIN, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"lbtrain {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def build(self, model_run_id: str, *extra: str, model_type: str = "text_single_classification") -> dict[str, Any]:
        out = self.cli("datasets", "build", model_type, "--out", str(self.labelbox_dir),
                       "--model-run-id", model_run_id, *extra)
        return json.loads(out.stdout)

    def webhook(self, model_run_id: str, delivery_id: str,
                model_type: str = "text_single_classification") -> dict[str, Any]:
        body = {"modelId": "e2e-model", "modelRunId": model_run_id, "modelType": model_type}
        status, answer = self.api.send_webhook("/model_run", body, SECRET, delivery_id=delivery_id)
        assert status == 200
        return answer

    def model_run_dir(self, model_run_id: str) -> Path:
        return self.labelbox_dir / "model_runs" / model_run_id

    def statuses(self, model_run_id: str) -> list[dict[str, Any]]:
        path = self.model_run_dir(model_run_id) / "status.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def dev_env(root: Path, port: int, emulator_hosts: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        **os.environ, **emulator_hosts,
        "GOOGLE_CLOUD_PROJECT": fresh_id("e2e"), "DEPLOYMENT_NAME": "dev",
        "LBTRAIN_STATE_DIR": str(root / "state"), "LABELBOX_DIR": str(root / "labelbox"),
        "ARTIFACT_ROOT": str(root / "artifacts"), "API_TOKEN": TOKEN, "LABELBOX_WEBHOOK_SECRET": SECRET,
        "LBTRAIN_API_URL": f"http://127.0.0.1:{port}", "PYTHONUNBUFFERED": "1", **extra,
    }


@contextlib.contextmanager
def running_dev(root: Path, port: int, env: dict[str, str], log_name: str = "e2e-dev.log") -> Iterator[Dev]:
    """`lbtrain dev` as a subprocess until the block ends; then Ctrl-C, which must stop it cleanly."""
    log_path = root / "dev.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*LBTRAIN, "dev", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    d = Dev(root, env, port)
    try:
        deadline = time.monotonic() + 90
        while "ready at" not in log_path.read_text():
            assert proc.poll() is None, f"lbtrain dev exited early:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"lbtrain dev not ready:\n{log_path.read_text()}"
            time.sleep(0.2)
        with urllib.request.urlopen(d.url + "/healthz", timeout=5) as resp:
            assert resp.status == 200
        yield d
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / log_name)
    assert proc.returncode == 0, f"lbtrain dev did not stop cleanly: {proc.returncode}"
    assert "lbtrain dev: stopping" in log_path.read_text()


@pytest.fixture(scope="module")
def dev(emulator_hosts: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    root = tmp_path_factory.mktemp("e2e")
    port = free_port()
    with running_dev(root, port, dev_env(root, port, emulator_hosts)) as d:
        yield d
