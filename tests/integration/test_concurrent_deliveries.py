"""Concurrent duplicates of one delivery, through a real threaded HTTP server on the emulators: Firestore
contention must never surface as a 500. Every delivery answers 2xx naming the one run the winner created
(the redelivery answer), and exactly one run exists."""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from lbtrain import signature
from lbtrain.adapters.pubsub_bus import topology
from lbtrain.api.apps import ingress_app
from lbtrain.api.push import all_stages
from lbtrain.config import Config
from lbtrain.deps import Deps
from tests.conftest import fresh_id

SECRET = "concurrency-webhook-secret-0123456789"
TOKEN = "concurrency-api-token-0123456789"
CONCURRENT = 24
INSTANCES = 3


@pytest.fixture
def instances(emulator_hosts: dict[str, str], tmp_path: Path) -> Iterator[tuple[list[str], Deps]]:
    """Three ingress instances (apps with their own clients and locks) on one deployment."""
    from google.cloud import pubsub_v1

    config = Config(deployment_name=fresh_id("dep"), project=fresh_id("proj"), artifact_root=str(tmp_path / "a"),
                    labelbox_dir=str(tmp_path / "lb"), state_dir=str(tmp_path / "s"), api_token=TOKEN,
                    labelbox_webhook_secret=SECRET, job_module="lbtrain.noop_job", job_python=sys.executable,
                    pubsub_emulator_host=emulator_hosts["PUBSUB_EMULATOR_HOST"],
                    firestore_emulator_host=emulator_hosts["FIRESTORE_EMULATOR_HOST"])
    (tmp_path / "lb" / "model_runs").mkdir(parents=True)
    publisher = pubsub_v1.PublisherClient()
    for spec in topology(config.deployment_name, all_stages()):
        publisher.create_topic(name=publisher.topic_path(config.project, spec.topic_id))
    servers = [make_server("127.0.0.1", 0, ingress_app(Deps(config)), threaded=True) for _ in range(INSTANCES)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{server.server_port}" for server in servers], Deps(config)
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ingress(instances: tuple[list[str], Deps]) -> tuple[str, Deps]:
    urls, deps = instances
    return urls[0], deps


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode(errors="replace")


def _all_at_once(n: int, call: Any) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        results[i] = call()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def _runs_of(deps: Deps, model_run_id: str) -> list[dict[str, Any]]:
    return deps.store.list_runs(model_run_id=model_run_id, limit=100)


def test_concurrent_duplicate_webhook_deliveries_all_name_the_one_run(ingress: tuple[str, Deps]) -> None:
    url, deps = ingress
    model_run_id = fresh_id("mr")
    body = json.dumps({"modelId": "m1", "modelRunId": model_run_id, "modelType": "text_single_classification"}).encode()
    headers = {**signature.headers(SECRET, body), "Content-Type": "application/json", "X-Labelbox-Id": fresh_id("d")}

    answers = _all_at_once(CONCURRENT, lambda: _post(url + "/model_run", body, headers))

    assert all(a is not None for a in answers)
    statuses = sorted(a[0] for a in answers)
    assert all(200 <= s < 300 for s in statuses), answers
    run_ids = {a[2]["run_id"] for a in answers}
    assert len(run_ids) == 1, answers
    assert sum(a[2]["created"] for a in answers) == 1, answers
    assert {a[2].get("reason") for a in answers if not a[2]["created"]} <= {"duplicate delivery"}
    runs = _runs_of(deps, model_run_id)
    assert [r["run_id"] for r in runs] == list(run_ids)


def test_concurrent_distinct_deliveries_for_one_model_run_start_one_run(ingress: tuple[str, Deps]) -> None:
    """Different delivery ids (Labelbox re-sent the request) for one model run: single flight, one run."""
    url, deps = ingress
    model_run_id = fresh_id("mr")
    body = json.dumps({"modelId": "m1", "modelRunId": model_run_id, "modelType": "text_single_classification"}).encode()

    def deliver() -> tuple[int, dict[str, str], Any]:
        headers = {**signature.headers(SECRET, body), "Content-Type": "application/json",
                   "X-Labelbox-Id": fresh_id("d")}
        return _post(url + "/model_run", body, headers)

    answers = _all_at_once(CONCURRENT, deliver)
    assert all(200 <= a[0] < 300 for a in answers), answers
    run_ids = {a[2]["run_id"] for a in answers}
    assert len(run_ids) == 1, answers
    assert [r["run_id"] for r in _runs_of(deps, model_run_id)] == list(run_ids)


def test_concurrent_api_requests_with_one_idempotency_key(ingress: tuple[str, Deps]) -> None:
    url, deps = ingress
    model_run_id = fresh_id("mr")
    body = json.dumps({"model_type": "text_single_classification", "model_run_id": model_run_id}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
               "Idempotency-Key": fresh_id("k")}
    answers = _all_at_once(CONCURRENT, lambda: _post(url + "/runs", body, headers))
    assert all(200 <= a[0] < 300 for a in answers), answers
    assert len({a[2]["run_id"] for a in answers}) == 1, answers
    assert len(_runs_of(deps, model_run_id)) == 1


def test_concurrent_duplicates_across_instances_all_name_the_one_run(instances: tuple[list[str], Deps]) -> None:
    """Spread over three instances, so the duplicates really contend in Firestore: retried with back-off,
    answered with the winner's run; a 503 (with Retry-After) is the only other answer allowed."""
    urls, deps = instances
    model_run_id = fresh_id("mr")
    body = json.dumps({"modelId": "m1", "modelRunId": model_run_id, "modelType": "text_single_classification"}).encode()
    headers = {**signature.headers(SECRET, body), "Content-Type": "application/json", "X-Labelbox-Id": fresh_id("d")}
    turn = iter(range(CONCURRENT))
    lock = threading.Lock()

    def deliver() -> tuple[int, dict[str, str], Any]:
        with lock:
            i = next(turn)
        return _post(urls[i % len(urls)] + "/model_run", body, headers)

    answers = _all_at_once(CONCURRENT, deliver)
    assert all(200 <= a[0] < 300 or (a[0] == 503 and a[1].get("Retry-After")) for a in answers), answers
    ok = [a for a in answers if a[0] < 300]
    assert ok and len({a[2]["run_id"] for a in ok}) == 1, answers
    assert [r["run_id"] for r in _runs_of(deps, model_run_id)] == [ok[0][2]["run_id"]]
