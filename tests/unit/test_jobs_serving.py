"""The Vertex-contract model server (in-process) and the local process bookkeeping around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from jobs import deploy, serving


class FakePredictor:
    meta = {"model_type": "text_single_classification"}

    def parse_instances(self, instances: list[Any]) -> list[dict[str, Any]]:
        if not all(isinstance(i, str) for i in instances):
            raise ValueError("instances must be strings")
        return [{"text": i} for i in instances]

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"label": "long" if len(r["text"]) > 5 else "short", "confidence": 1.0, "scores": {}}
            for r in rows
        ]


@pytest.fixture()
def server():
    srv = serving.make_server(FakePredictor(), "127.0.0.1", 0, "/v1/predict", "/v1/health")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_and_predict_routes(server: str) -> None:
    assert serving.healthy(server + "/v1/health")
    assert not serving.healthy(server + "/health")  # routes come from AIP_*_ROUTE
    assert serving.predict(server + "/v1/predict", ["hi", "hello world"]) == {
        "predictions": [
            {"label": "short", "confidence": 1.0, "scores": {}},
            {"label": "long", "confidence": 1.0, "scores": {}},
        ]
    }


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"not json", 400), (b"[]", 400), (b'{"instances": "x"}', 400), (b'{"instances": [1]}', 400)],
)
def test_bad_requests_get_400(server: str, body: bytes, code: int) -> None:
    status, payload = _post(server + "/v1/predict", body)
    assert status == code and "error" in payload


def test_unknown_route_404(server: str) -> None:
    assert _post(server + "/nope", b"{}")[0] == 404


def test_stop_all_without_servers(tmp_path: Path) -> None:
    assert serving.stop_all(str(tmp_path)) == 0


def test_stop_all_never_signals_a_reused_pid(tmp_path: Path) -> None:
    """A stale record naming a live process that is not a model server must not kill it."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path = serving.record_path(str(tmp_path), "text_single_classification", "old")
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"pid": other.pid, "health_url": "http://127.0.0.1:9/health"}))
        (path.parent / "text_single_classification.dead.json").write_text(json.dumps({"pid": 2**22 + 12345}))
        assert serving.stop_all(str(tmp_path)) == 0
        assert other.poll() is None  # still running
        assert not list(path.parent.glob("*.json"))  # stale records cleaned up
        assert serving.pid_alive(os.getpid()) is False  # pytest itself is not a model server
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize(
    ("champion", "alive", "expected"),
    [
        (None, False, (True, "no champion yet")),
        (
            {"run_id": "old", "metric": "macro_f1", "value": 0.80},
            True,
            (True, "macro_f1 0.8000 >= champion 0.8000"),
        ),
        (
            {"run_id": "old", "metric": "macro_f1", "value": 0.81},
            True,
            (False, "macro_f1 0.8000 < champion 0.8100"),
        ),
        (
            {"run_id": "old", "metric": "macro_f1", "value": 0.99},
            False,
            (False, "macro_f1 0.8000 < champion 0.9900"),  # a dead but better champion is restarted instead
        ),
        ({"run_id": "new", "metric": "macro_f1", "value": 0.80}, True, (False, "already the champion")),
        (
            {"run_id": "new", "metric": "macro_f1", "value": 0.80},
            False,
            (True, "champion (this run) is not running"),
        ),
        (
            {"run_id": "old", "metric": "accuracy", "value": 0.99},
            True,
            (True, "champion has no comparable macro_f1"),
        ),
    ],
)
def test_gate(champion: dict[str, Any] | None, alive: bool, expected: tuple[bool, str]) -> None:
    deploy_it, reason = deploy.decide(0.80, "macro_f1", champion, alive, "new")
    assert deploy_it == expected[0]
    assert reason.startswith(expected[1])
