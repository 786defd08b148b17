"""An in-process local stack per test (fresh project and deployment on the shared emulators)
running the no-op job, so these tests exercise the orchestration, not the models."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain.client import Client
from lbtrain.config import Config
from lbtrain.devstack import DevStack
from lbtrain.emulators import free_port
from tests.conftest import fresh_id
from tests.fakes.vertex import FakeVertex, serve

TOKEN = "integration-api-token-0123456789"
SECRET = "integration-webhook-secret-0123456789"


class Stack:
    def __init__(self, dev: DevStack, root: Path):
        self.dev = dev
        self.root = root
        self.api = Client(dev.url, token=TOKEN, retries=0)
        self.labelbox_dir = Path(dev.config.labelbox_dir)
        self.jobs_dir = Path(dev.config.artifact_root) / "local-jobs"

    @property
    def deps(self):  # noqa: ANN201
        return self.dev.deps

    def model_run(self, model_run_id: str | None = None) -> str:
        """A file-backed Labelbox model run (the no-op job never reads its rows)."""
        model_run_id = model_run_id or fresh_id("mr")
        d = self.labelbox_dir / "model_runs" / model_run_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "export.ndjson").write_text(json.dumps({"data_row": {"id": "dr1", "row_data": "x"}}) + "\n")
        return model_run_id

    def webhook(self, model_run_id: str, delivery_id: str = "", model_type: str = "text_single_classification",
                secret: str = SECRET) -> tuple[int, Any]:
        body = {"modelId": "m1", "modelRunId": model_run_id, "modelType": model_type}
        return self.api.send_webhook("/model_run", body, secret, delivery_id=delivery_id or fresh_id("d"))

    def statuses(self, model_run_id: str) -> list[str]:
        return [s["status"] for s in self.deps.labelbox.statuses(model_run_id)]

    def job_names(self) -> list[str]:
        return sorted(p.name for p in self.jobs_dir.iterdir()) if self.jobs_dir.exists() else []

    def wait(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.api.wait(run_id, timeout=timeout, interval=0.2)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


def make_config(root: Path, **overrides: Any) -> Config:
    base = dict(
        deployment_name=fresh_id("dep"), project=fresh_id("proj"),
        artifact_root=str(root / "artifacts"), labelbox_dir=str(root / "labelbox"),
        state_dir=str(root / "state"), api_token=TOKEN, labelbox_webhook_secret=SECRET,
        job_module="lbtrain.noop_job", job_python=sys.executable, stale_after_seconds=3600.0,
    )
    base.update(overrides)
    return Config(**base)


@pytest.fixture
def stack_factory(emulator_hosts: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[DevStack] = []

    def start(**overrides: Any) -> Stack:
        cfg = make_config(tmp_path / f"s{len(stacks)}", pubsub_emulator_host=emulator_hosts["PUBSUB_EMULATOR_HOST"],
                          firestore_emulator_host=emulator_hosts["FIRESTORE_EMULATOR_HOST"], **overrides)
        dev = DevStack(cfg, port=free_port(), reconcile_interval=3600.0)
        stacks.append(dev)
        dev.start()
        return Stack(dev, tmp_path)

    yield start
    for dev in stacks:
        dev.stop()


@pytest.fixture
def vertex() -> Iterator[tuple[FakeVertex, str]]:
    """A fake of Vertex AI's REST API on a free port: (fake, its endpoint for VERTEX_API_ENDPOINT)."""
    fake = FakeVertex()
    server = serve(fake)
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory()
