"""Push endpoints' answers to Pub/Sub (docs/architecture.md §5), with recording fakes instead of the emulators."""

from __future__ import annotations

from lbtrain.api.apps import dev_app
from lbtrain.config import Config
from lbtrain.deps import Deps
from lbtrain.messages import encode_push


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        def record(*args, **kwargs):  # noqa: ANN202
            self.calls.append((name, args, kwargs))
            raise AssertionError(f"unexpected call {name}")

        return record


def make_client(**overrides):  # noqa: ANN201
    deps = Deps(Config(**{"api_token": "t" * 20, "labelbox_webhook_secret": "s" * 20, **overrides}))
    deps.store, deps.bus, deps.backend, deps.labelbox = Recorder(), Recorder(), Recorder(), Recorder()
    return dev_app(deps).test_client(), deps


def test_bad_envelopes_are_rejected_for_dead_lettering():
    client, deps = make_client()
    assert client.post("/push/step/etl", data="nope", content_type="application/json").status_code == 400
    assert client.post("/push/step/etl", json={"no": "message"}).status_code == 400
    assert client.post("/push/step/etl", json={"message": {"data": "!!notbase64"}}).status_code == 400
    resp = client.post("/push/step/etl", json=encode_push({"run_id": "r1", "stage": "etl"}))
    assert resp.status_code == 400 and b"attempt" in resp.data
    assert deps.store.calls == [] and deps.bus.calls == []


def test_misrouted_step_message_is_acked_without_work():
    client, deps = make_client()
    resp = client.post("/push/step/train", json=encode_push({"run_id": "r1", "stage": "etl", "attempt": 1},
                                                            {"stage": "etl"}))
    assert resp.status_code == 204  # the emulator ignores filters: ack, don't retry forever
    assert deps.store.calls == []


def test_unknown_stage_route_is_404():
    client, _ = make_client()
    assert client.post("/push/step/nope", json=encode_push({})).status_code == 404


def test_oidc_push_auth_requires_a_token():
    client, deps = make_client(push_auth="oidc", push_audience="https://example.invalid/push",
                               push_service_account="push@example.iam.gserviceaccount.com")
    msg = encode_push({"run_id": "r1", "stage": "etl", "attempt": 1}, {"stage": "etl"})
    resp = client.post("/push/step/etl", json=msg)
    assert resp.status_code == 401 and b"OIDC" in resp.data
    resp = client.post("/push/step/etl", json=msg, headers={"Authorization": "Bearer not-a-jwt"})
    assert resp.status_code == 401
    assert deps.store.calls == []


def test_job_event_without_job_id_is_a_bad_message():
    client, deps = make_client()
    assert client.post("/push/job-events", json=encode_push({"state": "SUCCEEDED"})).status_code == 400
    assert deps.store.calls == []
