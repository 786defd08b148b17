"""Secret hygiene, end to end: `lbtrain dev` runs with distinctive secret values (API_TOKEN,
LABELBOX_WEBHOOK_SECRET, LABELBOX_API_KEY) and the no-op job; runs are driven every way a user drives
them (signed webhook, REST, a failure and its retry, a cancel, a retraining rule and a label webhook,
dashboard actions, and refused requests, one carrying the token in its query string). Then every place
anything is kept is searched for the secrets: the stack's stdout/stderr, every job log and artifact,
the file-backed Labelbox, the state dir, every Pub/Sub message (copied to a watch subscription on every
topic before the first request), every Firestore document, and every dashboard page and JSON answer."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain import signature
from lbtrain.emulators import free_port
from tests.conftest import fresh_id
from tests.e2e.conftest import Dev, dev_env, running_dev

TOKEN = f"sekret-token-{uuid.uuid4().hex}"
WEBHOOK_SECRET = f"sekret-webhook-{uuid.uuid4().hex}"
API_KEY = f"sekret-apikey-{uuid.uuid4().hex}"
SECRETS = {"API_TOKEN": TOKEN, "LABELBOX_WEBHOOK_SECRET": WEBHOOK_SECRET, "LABELBOX_API_KEY": API_KEY}
MODEL_TYPE = "text_single_classification"


class Http:
    """Every answer the stack gives is kept, to be searched too."""

    def __init__(self, base: str):
        self.base = base
        self.answers: list[tuple[str, bytes]] = []

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             keep: bool = True) -> tuple[int, bytes]:
        """`keep=False` for a request that itself carries a secret in its path or body: its answer may
        echo the caller's own input back to it; the logs and state must not keep it."""
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, data = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        if keep:
            self.answers.append((f"{method} {path} → {status}", data))
        return status, data

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        raw = json.dumps(body).encode() if body is not None else None
        status, data = self.call(method, path, raw, {"Authorization": f"Bearer {TOKEN}"})
        return status, json.loads(data) if data else None

    def webhook(self, path: str, body: dict[str, Any], event: str = "") -> tuple[int, Any]:
        raw = json.dumps(body).encode()
        headers = {**signature.headers(WEBHOOK_SECRET, raw), "X-Labelbox-Id": fresh_id("d"),
                   **({"X-Labelbox-Event": event} if event else {})}
        status, data = self.call("POST", path, raw, headers)
        return status, json.loads(data)

    def wait(self, run_id: str, statuses: tuple[str, ...] = ("SUCCEEDED", "FAILED", "CANCELLED"),
             timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.api("GET", f"/runs/{run_id}")[1]
            if run["status"] in statuses:
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run['status']}: {run}"
            time.sleep(0.3)


@pytest.fixture(scope="module")
def stack(emulator_hosts: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dev, list[str]]]:
    from google.cloud import pubsub_v1

    root = tmp_path_factory.mktemp("secrets")
    port = free_port()
    env = dev_env(root, port, emulator_hosts, **SECRETS, LBTRAIN_JOB_MODULE="lbtrain.noop_job",
                  LBTRAIN_STALE_AFTER_SECONDS="3600")
    with running_dev(root, port, env, log_name="e2e-secret-hygiene.log") as dev:
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        project = env["GOOGLE_CLOUD_PROJECT"]
        watches = []
        for topic in publisher.list_topics(request={"project": f"projects/{project}"}):
            path = subscriber.subscription_path(project, topic.name.rsplit("/", 1)[1] + "-watch")
            subscriber.create_subscription(request={"name": path, "topic": topic.name})
            watches.append(path)
        assert len(watches) >= 4, watches
        yield dev, watches


def _model_run(dev: Dev) -> str:
    model_run_id = fresh_id("mr")
    d = dev.labelbox_dir / "model_runs" / model_run_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "export.ndjson").write_text(json.dumps({"data_row": {"id": "dr1", "row_data": "x"}}) + "\n")
    return model_run_id


def _drive(dev: Dev, http: Http) -> list[str]:
    """Runs that succeed, fail and are retried, are cancelled, wait on a rule; refused requests."""
    run_ids = []
    status, answer = http.webhook("/model_run", {"modelId": "m1", "modelRunId": _model_run(dev),
                                                 "modelType": MODEL_TYPE})
    assert status == 200, answer
    run_ids.append(answer["run_id"])

    status, failing = http.api("POST", "/runs", {"model_type": MODEL_TYPE, "model_run_id": _model_run(dev),
                                                 "params": {"noop": {"fail": {"train": [1]}}}})
    assert status == 200, failing
    run_ids.append(failing["run_id"])
    assert http.wait(failing["run_id"])["status"] == "FAILED"
    status, retried = http.call("POST", f"/dashboard/api/runs/{failing['run_id']}/retry", b"",
                                {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, retried

    status, slow = http.api("POST", "/runs", {"model_type": MODEL_TYPE, "model_run_id": _model_run(dev),
                                              "params": {"noop": {"sleep": {"etl": 60}}}})
    assert status == 200, slow
    run_ids.append(slow["run_id"])
    deadline = time.monotonic() + 60
    while http.api("GET", f"/runs/{slow['run_id']}")[1]["steps"][0]["state"] != "RUNNING":
        assert time.monotonic() < deadline, "the slow run's etl never started"
        time.sleep(0.2)
    assert http.api("POST", f"/runs/{slow['run_id']}/cancel")[0] in (200, 202)

    project = fresh_id("proj")
    status, rule = http.api("PUT", f"/triggers/{project}", {"model_type": MODEL_TYPE, "model_id": "m1",
                                                             "min_labels": 1})
    assert status == 200, rule
    status, counted = http.webhook("/webhooks/labelbox", {"id": fresh_id("lb"), "project": {"id": project},
                                                          "dataRow": {"id": "dr1"}}, event="LABEL_CREATED")
    assert status == 200, counted

    # Refused: a wrong token, a bad signature, a deep body, the token where it does not belong.
    assert http.call("GET", "/runs", headers={"Authorization": f"Bearer {TOKEN}x"})[0] == 401
    assert http.call("POST", "/model_run", b"{}", {signature.SHA256_HEADER: "sha256=00"})[0] == 401
    assert http.call("POST", "/runs", b"[" * 10_000, {"Authorization": f"Bearer {TOKEN}"})[0] == 400
    assert http.call("GET", f"/runs/nosuchrun?token={TOKEN}", headers={"Authorization": f"Bearer {TOKEN}"},
                     keep=False)[0] == 404
    assert http.call("GET", f"/dashboard/runs/{TOKEN}", keep=False)[0] == 404
    assert http.call("POST", "/runs", json.dumps({"model_type": "no_such_type", "model_run_id": WEBHOOK_SECRET,
                                                  "model_id": API_KEY}).encode(),
                     {"Authorization": f"Bearer {TOKEN}"}, keep=False)[0] == 400

    for run_id in run_ids:
        http.wait(run_id)
    return run_ids


def _pages(dev: Dev, http: Http, run_ids: list[str]) -> None:
    http.call("GET", "/dashboard/")
    http.call("GET", "/dashboard/api/runs")
    http.call("GET", f"/dashboard/models/{MODEL_TYPE}")
    http.api("GET", "/runs?limit=500")
    http.api("GET", "/triggers")
    for run_id in run_ids:
        http.call("GET", f"/dashboard/runs/{run_id}")
        http.call("GET", f"/dashboard/api/runs/{run_id}")
        run = http.api("GET", f"/runs/{run_id}")[1]
        for step in run["steps"]:
            http.call("GET", f"/dashboard/runs/{run_id}/steps/{step['stage']}/log")


def _messages(watches: list[str]) -> list[tuple[str, bytes]]:
    from google.cloud import pubsub_v1

    sub = pubsub_v1.SubscriberClient()
    got = []
    for path in watches:
        while True:
            resp = sub.pull(request={"subscription": path, "max_messages": 500}, timeout=10)
            if not resp.received_messages:
                break
            got += [(f"message on {path}", m.message.data + json.dumps(dict(m.message.attributes)).encode())
                    for m in resp.received_messages]
            sub.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in resp.received_messages]})
    return got


def _documents(project: str) -> list[tuple[str, bytes]]:
    from google.cloud import firestore

    db = firestore.Client(project=project)
    out = []

    def walk(coll: Any) -> None:
        for snap in coll.stream():
            out.append((f"document {snap.reference.path}", json.dumps(snap.to_dict(), default=str).encode()))
            for sub in snap.reference.collections():
                walk(sub)

    for coll in db.collections():
        walk(coll)
    return out


def _files(root: Path) -> list[tuple[str, bytes]]:
    return [(f"file {p}", p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def test_no_secret_anywhere_after_runs(stack: tuple[Dev, list[str]]) -> None:
    dev, watches = stack
    http = Http(dev.url)
    run_ids = _drive(dev, http)
    _pages(dev, http, run_ids)
    time.sleep(1)  # the last messages reach the watch subscriptions

    places = [*http.answers, *_messages(watches), *_documents(dev.env["GOOGLE_CLOUD_PROJECT"]), *_files(dev.root)]
    kinds = {where.split(" ", 1)[0] for where, _ in places}
    assert {"message", "document", "file"} <= kinds | {"GET", "POST", "PUT"}, kinds
    assert any(where.startswith("message") for where, _ in places), "no Pub/Sub message was captured"
    assert any("job.log" in where for where, _ in places), "no job log was written"
    dev_log = next(data for where, data in places if where.startswith("file") and where.endswith("dev.log"))
    assert all(run_id.encode() in dev_log for run_id in run_ids), "the stack's log did not capture the runs"
    documents = b"".join(data for where, data in places if where.startswith("document"))
    assert all(run_id.encode() in documents for run_id in run_ids)

    leaks = [f"{name} in {where}" for where, data in places for name, value in SECRETS.items()
             if value.encode() in data]
    assert leaks == []
