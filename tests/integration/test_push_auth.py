"""Push authentication on the real push endpoints, against the Pub/Sub and Firestore emulators:
the ingress (PUSH_AUTH=oidc) and a launcher (PUSH_AUTH=cloudrun-iam) built as their images build
them, with tokens signed by a local key (tests/fakes/google_oidc.py). A refused push writes no
document and publishes no message; the accepted one starts the run / launches the step.

No push subscriptions here (the emulator sends no tokens): the test is the only pusher, and a
pull subscription on the step topic sees whatever the ingress publishes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from lbtrain import domain as d
from lbtrain.adapters.pubsub_bus import topology
from lbtrain.api.apps import ingress_app, launcher_app
from lbtrain.api.push import all_stages
from lbtrain.config import Config, to_env
from lbtrain.deps import Deps
from lbtrain.messages import RunRequest, encode_push
from tests.conftest import ROOT, fresh_id
from tests.fakes.google_oidc import PUSH_SA, Issuer
from tests.integration.conftest import make_config

INGRESS_AUD, LAUNCHER_AUD = "proj/dep/ingress", "proj/dep/launcher-etl"
OTHER_SA = "other@proj.iam.gserviceaccount.com"


@dataclass
class World:
    config: Config
    issuer: Issuer
    publisher: pubsub_v1.PublisherClient
    subscriber: pubsub_v1.SubscriberClient
    step_sub: str
    deps: list[Deps]

    def app(self, factory: Any, **overrides: Any):  # noqa: ANN201
        deps = Deps(self.config.with_overrides(**overrides))
        self.deps.append(deps)
        return factory(deps).test_client(), deps

    def step_messages(self) -> list[dict[str, Any]]:
        """Everything published to {dep}-step-etl so far (acknowledged: each is seen once)."""
        try:  # publishing happens before the push is answered: a short wait is enough
            resp = self.subscriber.pull(subscription=self.step_sub, max_messages=10, timeout=3)
        except gexc.DeadlineExceeded:
            return []
        if resp.received_messages:
            self.subscriber.acknowledge(subscription=self.step_sub,
                                        ack_ids=[m.ack_id for m in resp.received_messages])
        return [{"data": json.loads(m.message.data), "attributes": dict(m.message.attributes),
                 "message_id": m.message.message_id} for m in resp.received_messages]

    def collections(self) -> list[str]:
        return [c.id for c in self.deps[0].store.db.collections()]


@pytest.fixture
def world(emulator_hosts: dict[str, str], tmp_path: Path) -> Iterator[World]:
    cfg = make_config(tmp_path, pubsub_emulator_host=emulator_hosts["PUBSUB_EMULATOR_HOST"],
                      firestore_emulator_host=emulator_hosts["FIRESTORE_EMULATOR_HOST"],
                      push_service_account=PUSH_SA)
    (tmp_path / "labelbox" / "model_runs").mkdir(parents=True)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topics = [publisher.topic_path(cfg.project, spec.topic_id) for spec in topology(cfg.deployment_name, all_stages())]
    for topic in topics:
        publisher.create_topic(name=topic)
    step_sub = subscriber.subscription_path(cfg.project, fresh_id("step-etl-pull"))
    subscriber.create_subscription(name=step_sub, topic=publisher.topic_path(cfg.project, cfg.topic("step-etl")))
    issuer = Issuer().serve()
    w = World(cfg, issuer, publisher, subscriber, step_sub, [])
    yield w
    issuer.close()
    for deps in w.deps:
        if "backend" in deps.__dict__:  # a launched local job is ours to stop
            deps.backend.stop_all()
    subscriber.delete_subscription(subscription=step_sub)
    for topic in topics:
        try:
            publisher.delete_topic(topic=topic)
        except gexc.NotFound:
            pass


def model_run(config: Config) -> str:
    mr = fresh_id("mr")
    folder = Path(config.labelbox_dir) / "model_runs" / mr
    folder.mkdir(parents=True)
    (folder / "export.ndjson").write_text(json.dumps({"data_row": {"id": "dr1", "row_data": "x"}}) + "\n")
    return mr


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_ingress_runs_topic_accepts_only_the_push_identity(world: World):
    issuer = world.issuer
    client, deps = world.app(ingress_app, push_auth="oidc", push_audience=INGRESS_AUD,
                             push_certs_url=issuer.certs_url)
    mr = model_run(world.config)
    request = encode_push(RunRequest(model_type="text_single_classification", model_run_id=mr).to_dict(),
                          message_id=fresh_id("m"))
    now = issuer.claims(INGRESS_AUD)["iat"]
    refused = {
        "another service account": issuer.signed(issuer.claims(INGRESS_AUD, email=OTHER_SA)),
        "a user account": issuer.signed(issuer.claims(INGRESS_AUD, email="alice@example.com")),
        "the wrong audience": issuer.signed(issuer.claims(LAUNCHER_AUD)),
        "expired": issuer.signed(issuer.claims(INGRESS_AUD, iat=now - 7200, exp=now - 3600)),
        "email not verified": issuer.signed(issuer.claims(INGRESS_AUD, email_verified=False)),
        "as Cloud Run forwards it": issuer.stripped(issuer.claims(INGRESS_AUD)),
    }
    for case, token in refused.items():
        resp = client.post("/push/runs", json=request, headers=bearer(token))
        assert resp.status_code == 401, (case, resp.data)
    assert client.post("/push/runs", json=request).status_code == 401
    assert world.collections() == [], "a refused push wrote to Firestore"
    assert world.step_messages() == [], "a refused push published a step message"
    assert deps.labelbox.statuses(mr) == []

    resp = client.post("/push/runs", json=request, headers=bearer(issuer.signed(issuer.claims(INGRESS_AUD))))
    assert resp.status_code == 204, resp.data
    (run,) = deps.store.list_runs(model_run_id=mr)
    assert run["status"] == d.QUEUED
    (step,) = world.step_messages()
    assert step["data"]["run_id"] == run["run_id"] and step["data"]["stage"] == "etl"
    assert issuer.fetches == 1  # seven tokens checked, one certificate fetch


def test_launcher_behind_cloud_run_iam_trusts_only_the_forwarded_push_identity(world: World):
    issuer = world.issuer
    ingress, _ = world.app(ingress_app, push_auth="oidc", push_audience=INGRESS_AUD,
                           push_certs_url=issuer.certs_url)
    mr = model_run(world.config)
    resp = ingress.post("/push/runs", headers=bearer(issuer.signed(issuer.claims(INGRESS_AUD))),
                        json=encode_push({"model_type": "text_single_classification", "model_run_id": mr}))
    assert resp.status_code == 204, resp.data
    (step_msg,) = world.step_messages()
    run_id = step_msg["data"]["run_id"]
    push = encode_push(step_msg["data"], step_msg["attributes"], message_id=step_msg["message_id"])

    client, deps = world.app(launcher_app, stage="etl", push_auth="cloudrun-iam", push_audience=LAUNCHER_AUD,
                             job_python=sys.executable)
    now = issuer.claims(LAUNCHER_AUD)["iat"]
    refused = {
        "another service account": issuer.stripped(issuer.claims(LAUNCHER_AUD, email=OTHER_SA)),
        "a user account": issuer.stripped(issuer.claims(LAUNCHER_AUD, email="alice@example.com")),
        "the wrong audience": issuer.stripped(issuer.claims(INGRESS_AUD)),
        "expired": issuer.stripped(issuer.claims(LAUNCHER_AUD, iat=now - 7200, exp=now - 3600)),
        "email not verified": issuer.stripped(issuer.claims(LAUNCHER_AUD, email_verified=False)),
        "still signed (not through IAM)": issuer.signed(issuer.claims(LAUNCHER_AUD)),
        "malformed": "e30.e30",
    }
    for case, token in refused.items():
        resp = client.post("/push/step/etl", json=push, headers=bearer(token))
        assert resp.status_code == 401, (case, resp.data)
    step = deps.store.get_step(run_id, "etl")
    assert step["state"] == d.PENDING and not step.get("job"), step
    jobs_dir = Path(world.config.artifact_root) / "local-jobs"
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir()), "a refused push launched a job"

    resp = client.post("/push/step/etl", json=push, headers=bearer(issuer.stripped(issuer.claims(LAUNCHER_AUD))))
    assert resp.status_code == 204, resp.data
    step = deps.store.get_step(run_id, "etl")
    assert step["state"] == d.RUNNING and step["job"]["id"], step
    assert [p.name for p in jobs_dir.iterdir()] == [d.job_name(world.config.deployment_name, run_id, "etl", 1)]


def test_reconciler_function_behind_cloud_run_iam(world: World, monkeypatch: pytest.MonkeyPatch):
    """Cloud Scheduler's call, as Cloud Run forwards it, runs a sweep (nothing to do in a fresh
    deployment); anyone else's is refused before the sweep."""
    cfg = world.config.with_overrides(push_auth="cloudrun-iam", push_audience="proj/dep/reconciler")
    for key, value in to_env(cfg).items():
        monkeypatch.setenv(key, value)
    app = functions_framework.create_app("reconcile", str(ROOT / "functions/reconciler/main.py"), "http")
    client = app.test_client()
    issuer = world.issuer
    resp = client.post("/", headers=bearer(issuer.stripped(issuer.claims("proj/dep/reconciler", email=OTHER_SA))))
    assert resp.status_code == 401
    resp = client.post("/", headers=bearer(issuer.stripped(issuer.claims("proj/dep/reconciler"))))
    assert resp.status_code == 200 and resp.get_json() == {"actions": []}, resp.data
