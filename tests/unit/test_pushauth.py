"""Push authentication (lbtrain/pushauth.py) through the real apps and functions, with tokens signed
by a local key whose certificate a local server publishes (tests/fakes/google_oidc.py).

The stores are recording fakes here (nothing may be touched by a refused push);
tests/integration/test_push_auth.py does the same against the emulators."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import functions_framework
import pytest

from lbtrain import pushauth
from lbtrain.api.apps import ingress_app, launcher_app
from lbtrain.config import Config, to_env
from lbtrain.deps import Deps
from lbtrain.messages import encode_push
from tests.conftest import ROOT
from tests.fakes.google_oidc import PUSH_SA, Issuer, forged
from tests.unit.test_push_endpoints import Recorder

INGRESS_AUD = "proj-1/prod/ingress"
LAUNCHER_AUD = "proj-1/prod/launcher-etl"
OTHER_SA = "someone-else@proj-1.iam.gserviceaccount.com"
HOUR = 3600


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    served = Issuer().serve()
    yield served
    served.close()


def recording_deps(config: Config) -> Deps:
    deps = Deps(config)
    deps.store, deps.bus, deps.backend, deps.labelbox = Recorder(), Recorder(), Recorder(), Recorder()
    return deps


def ingress(issuer: Issuer, **overrides: Any):  # noqa: ANN201
    cfg = Config(api_token="t" * 20, labelbox_webhook_secret="s" * 20, push_auth="oidc", push_audience=INGRESS_AUD,
                 push_service_account=PUSH_SA, push_certs_url=issuer.certs_url).with_overrides(**overrides)
    deps = recording_deps(cfg)
    return ingress_app(deps).test_client(), deps


def launcher(**overrides: Any):  # noqa: ANN201
    cfg = Config(stage="etl", push_auth="cloudrun-iam", push_audience=LAUNCHER_AUD,
                 push_service_account=PUSH_SA).with_overrides(**overrides)
    deps = recording_deps(cfg)
    return launcher_app(deps).test_client(), deps


# A dead letter naming no run and a step message for another stage are acknowledged without work:
# 204 means the push got past authentication, and the recorders prove nothing was touched either way.
DEAD_LETTER = encode_push({"note": "names no run"})
MISROUTED_STEP = encode_push({"run_id": "r1", "stage": "train", "attempt": 1}, {"stage": "train"})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_untouched(deps: Deps) -> None:
    assert deps.store.calls == [] and deps.bus.calls == [] and deps.backend.calls == []


# -- the public ingress: PUSH_AUTH=oidc ------------------------------------------------------------

def test_ingress_accepts_the_push_service_accounts_signed_token(issuer: Issuer):
    client, deps = ingress(issuer)
    resp = client.post("/push/dead-letter", json=DEAD_LETTER, headers=bearer(issuer.signed(issuer.claims(INGRESS_AUD))))
    assert resp.status_code == 204, resp.data
    assert_untouched(deps)


REFUSED_BY_INGRESS = {
    "another service account": dict(email=OTHER_SA),
    "a user account": dict(email="alice@example.com", sub="10987"),
    "the wrong audience": dict(aud=LAUNCHER_AUD),
    "expired": dict(iat=-2 * HOUR, exp=-HOUR),
    "email not verified": dict(email_verified=False),
    "no email_verified claim": dict(email_verified=None),
    "no email": dict(email=None),
    "another issuer": dict(iss="https://evil.example"),
}


@pytest.mark.parametrize("case", list(REFUSED_BY_INGRESS))
def test_ingress_refuses_any_other_signed_identity(issuer: Issuer, case: str):
    overrides = dict(REFUSED_BY_INGRESS[case])
    now = issuer.claims(INGRESS_AUD)["iat"]
    for key in ("iat", "exp"):
        if key in overrides:
            overrides[key] += now
    client, deps = ingress(issuer)
    for path, body in (("/push/dead-letter", DEAD_LETTER), ("/push/runs", encode_push({"model_type": "x"}))):
        resp = client.post(path, json=body, headers=bearer(issuer.signed(issuer.claims(INGRESS_AUD, **overrides))))
        assert resp.status_code == 401, (case, path, resp.data)
    assert_untouched(deps)


def test_ingress_refuses_tokens_it_cannot_verify(issuer: Issuer):
    """A token shaped as Cloud Run forwards it (the signature stripped), one nobody signed, one signed
    by a key Google never published: the ingress is public, so only a valid signature counts."""
    client, deps = ingress(issuer)
    claims = issuer.claims(INGRESS_AUD)
    stranger = Issuer(kid=issuer.kid)  # same key id, another key
    for token in (issuer.stripped(claims), forged(claims), stranger.signed(claims), "not-a-jwt", ""):
        resp = client.post("/push/dead-letter", json=DEAD_LETTER, headers=bearer(token))
        assert resp.status_code == 401, resp.data
    assert client.post("/push/dead-letter", json=DEAD_LETTER).status_code == 401
    # The forwarded-claims header means nothing on the public ingress.
    resp = client.post("/push/dead-letter", json=DEAD_LETTER,
                       headers={pushauth.SERVERLESS_HEADER: f"Bearer {issuer.stripped(claims)}"})
    assert resp.status_code == 401
    assert_untouched(deps)


def test_ingress_caches_the_certificates_as_long_as_max_age_allows(issuer: Issuer):
    client, _ = ingress(issuer)
    token = issuer.signed(issuer.claims(INGRESS_AUD))
    for _ in range(5):
        assert client.post("/push/dead-letter", json=DEAD_LETTER, headers=bearer(token)).status_code == 204
    assert client.post("/push/dead-letter", json=DEAD_LETTER,
                       headers=bearer(issuer.signed(issuer.claims(INGRESS_AUD, email=OTHER_SA)))).status_code == 401
    assert issuer.fetches == 1


def test_certificates_without_a_max_age_are_fetched_every_time():
    issuer = Issuer(max_age=None).serve()
    try:
        client, _ = ingress(issuer)
        token = issuer.signed(issuer.claims(INGRESS_AUD))
        for _ in range(3):
            assert client.post("/push/dead-letter", json=DEAD_LETTER, headers=bearer(token)).status_code == 204
        assert issuer.fetches == 3
    finally:
        issuer.close()


def test_unreachable_certificates_are_transient(issuer: Issuer):
    token = issuer.signed(issuer.claims(INGRESS_AUD))
    url = issuer.certs_url
    issuer.close()
    client, deps = ingress(issuer, push_certs_url=url)
    resp = client.post("/push/dead-letter", json=DEAD_LETTER, headers=bearer(token))
    assert resp.status_code == 503  # Pub/Sub redelivers; the token is not blamed
    assert_untouched(deps)


def test_oidc_without_audience_or_service_account_refuses_everything(issuer: Issuer):
    """from_env refuses to start like this; a Config built in code fails closed too."""
    token = issuer.signed(issuer.claims(INGRESS_AUD))
    for overrides in (dict(push_audience=""), dict(push_service_account="")):
        client, deps = ingress(issuer, **overrides)
        assert client.post("/push/dead-letter", json=DEAD_LETTER, headers=bearer(token)).status_code == 500
        assert_untouched(deps)


def test_refusals_are_logged_without_the_token(issuer: Issuer, caplog: pytest.LogCaptureFixture):
    """Algorithm confusion (none, HS256 with the key id), segments that are not JSON objects, wrong
    claims: each refused, and the log says why without quoting the token."""
    ing, _ = ingress(issuer)
    iam, _ = launcher()
    header, payload, signature = issuer.signed(issuer.claims(INGRESS_AUD)).split(".")
    stripped = issuer.stripped(issuer.claims(LAUNCHER_AUD, email=OTHER_SA))
    tokens = [(ing, f"{b64json({'alg': 'none'})}.{payload}."),
              (ing, f"{b64json({'alg': 'HS256', 'kid': issuer.kid})}.{payload}.{signature}"),
              (ing, f"{b64json(['not', 'an', 'object'])}.{payload}.{signature}"),
              (ing, f"{header}.{b64json(['not', 'an', 'object'])}.{signature}"),
              (ing, issuer.signed(issuer.claims(INGRESS_AUD, email=OTHER_SA))),
              (iam, stripped), (iam, f"{header}.{b64json(['x'])}.{pushauth.STRIPPED_SIGNATURE}")]
    caplog.set_level("WARNING", logger="lbtrain.pushauth")
    for client, token in tokens:
        path = "/push/dead-letter" if client is ing else "/push/step/etl"
        resp = client.post(path, json=DEAD_LETTER if client is ing else MISROUTED_STEP, headers=bearer(token))
        assert resp.status_code == 401, (token, resp.data)
        segments = [part for part in token.split(".") if len(part) >= 8 and part != pushauth.STRIPPED_SIGNATURE]
        assert not any(part[:16] in resp.get_data(as_text=True) for part in segments), resp.data
    refusals = [r.getMessage() for r in caplog.records if r.name == "lbtrain.pushauth"]
    assert len(refusals) == len(tokens) and all("push refused (401" in m for m in refusals), refusals
    logged = "\n".join(refusals)
    for _, token in tokens:
        assert not any(part[:16] in logged for part in token.split(".")
                       if len(part) >= 8 and part != pushauth.STRIPPED_SIGNATURE), logged


def b64json(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


# -- private services behind Cloud Run IAM: PUSH_AUTH=cloudrun-iam ---------------------------------

def test_launcher_accepts_the_token_cloud_run_forwards(issuer: Issuer):
    client, deps = launcher()
    resp = client.post("/push/step/etl", json=MISROUTED_STEP,
                       headers=bearer(issuer.stripped(issuer.claims(LAUNCHER_AUD))))
    assert resp.status_code == 204, resp.data
    assert_untouched(deps)


REFUSED_BEHIND_IAM = {
    "another service account": dict(email=OTHER_SA),
    "a user account": dict(email="alice@example.com"),
    "the wrong audience": dict(aud=INGRESS_AUD),
    "expired": dict(iat=-2 * HOUR, exp=-HOUR),
    "no expiry": dict(exp=None),
    "a string expiry": dict(exp="tomorrow"),
    "email not verified": dict(email_verified=False),
    "another issuer": dict(iss="https://evil.example"),
}


@pytest.mark.parametrize("case", list(REFUSED_BEHIND_IAM))
def test_launcher_refuses_forwarded_claims_of_anyone_else(issuer: Issuer, case: str):
    overrides = dict(REFUSED_BEHIND_IAM[case])
    now = issuer.claims(LAUNCHER_AUD)["iat"]
    for key in ("iat", "exp"):
        if isinstance(overrides.get(key), int):
            overrides[key] += now
    client, deps = launcher()
    resp = client.post("/push/step/etl", json=MISROUTED_STEP,
                       headers=bearer(issuer.stripped(issuer.claims(LAUNCHER_AUD, **overrides))))
    assert resp.status_code == 401, (case, resp.data)
    assert_untouched(deps)


def test_launcher_refuses_malformed_and_unchecked_tokens(issuer: Issuer):
    client, deps = launcher()
    claims = issuer.claims(LAUNCHER_AUD)
    good = issuer.stripped(claims)
    header, payload, sig = good.split(".")
    for token in (issuer.signed(claims),  # still signed: it did not pass Cloud Run's IAM check
                  f"{header}.{payload}",
                  f"{header}.!!!.{sig}",
                  f"{header}.{payload[:-3]}.{sig}",
                  f"{header}.WyJub3QiLCAib2JqZWN0Il0.{sig}",  # ["not", "object"]
                  "not-a-jwt"):
        resp = client.post("/push/step/etl", json=MISROUTED_STEP, headers=bearer(token))
        assert resp.status_code == 401, (token, resp.data)
    assert client.post("/push/step/etl", json=MISROUTED_STEP,
                       headers={"Authorization": f"Basic {good}"}).status_code == 401
    assert client.post("/push/step/etl", json=MISROUTED_STEP).status_code == 401
    assert_untouched(deps)


def test_launcher_reads_the_header_cloud_run_checked(issuer: Issuer):
    """A caller that sends X-Serverless-Authorization has it checked by IAM, and Authorization is its
    own, unchecked: only the former's claims count."""
    client, deps = launcher()
    mine = issuer.stripped(issuer.claims(LAUNCHER_AUD))
    theirs = issuer.stripped(issuer.claims(LAUNCHER_AUD, email="alice@example.com"))
    resp = client.post("/push/step/etl", json=MISROUTED_STEP,
                       headers={pushauth.SERVERLESS_HEADER: f"Bearer {mine}", **bearer(forged({}))})
    assert resp.status_code == 204, resp.data
    for checked in (f"Bearer {theirs}", ""):
        resp = client.post("/push/step/etl", json=MISROUTED_STEP,
                           headers={pushauth.SERVERLESS_HEADER: checked, **bearer(mine)})
        assert resp.status_code == 401, checked
    assert_untouched(deps)


def test_cloudrun_iam_without_an_audience_leaves_it_to_cloud_run(issuer: Issuer):
    client, _ = launcher(push_audience="")
    resp = client.post("/push/step/etl", json=MISROUTED_STEP,
                       headers=bearer(issuer.stripped(issuer.claims("https://launcher-etl-xyz.a.run.app"))))
    assert resp.status_code == 204


def test_no_push_auth_locally():
    client, _ = launcher(push_auth="none")
    assert client.post("/push/step/etl", json=MISROUTED_STEP).status_code == 204


# -- the functions: job events (CloudEvent) and the reconciler (HTTP) -------------------------------

@pytest.fixture
def function_env(monkeypatch: pytest.MonkeyPatch) -> Config:
    cfg = Config(deployment_name="prod", project="proj-1", push_auth="cloudrun-iam",
                 push_audience="proj-1/prod/job-events", push_service_account=PUSH_SA)
    for key, value in to_env(cfg).items():
        monkeypatch.setenv(key, value)
    return cfg


def test_job_events_function_checks_the_forwarded_identity(issuer: Issuer, function_env: Config):
    app = functions_framework.create_app("on_job_event", str(ROOT / "functions/job_events/main.py"), "cloudevent")
    client = app.test_client()
    no_job_id = encode_push({"state": "SUCCEEDED"})  # a bad event: acknowledged (200) without work
    ok = issuer.stripped(issuer.claims(function_env.push_audience))
    assert client.post("/", json=no_job_id, headers=bearer(ok)).status_code == 200
    aud = function_env.push_audience
    for token in (issuer.stripped(issuer.claims(aud, email=OTHER_SA)), issuer.stripped(issuer.claims(LAUNCHER_AUD)),
                  issuer.signed(issuer.claims(aud))):
        assert client.post("/", json=no_job_id, headers=bearer(token)).status_code == 401
    assert client.post("/", json=no_job_id).status_code == 401


def test_reconciler_function_refuses_anyone_but_the_scheduler_identity(issuer: Issuer, function_env: Config,
                                                                       monkeypatch: pytest.MonkeyPatch):
    """Refused before any store access (none is reachable here); the accepted path runs against the
    emulators in tests/integration/test_functions.py."""
    monkeypatch.setenv("PUSH_AUDIENCE", "proj-1/prod/reconciler")
    app = functions_framework.create_app("reconcile", str(ROOT / "functions/reconciler/main.py"), "http")
    client = app.test_client()
    for token in (issuer.stripped(issuer.claims("proj-1/prod/reconciler", email="alice@example.com")),
                  issuer.stripped(issuer.claims("proj-1/prod/job-events"))):
        resp = client.post("/", headers=bearer(token))
        assert resp.status_code == 401 and "error" in resp.get_json()
    assert client.post("/").status_code == 401


# -- the certificate cache on its own ------------------------------------------------------------

@pytest.mark.parametrize("headers,seconds", [
    ({"Cache-Control": "public, max-age=22016, must-revalidate, no-transform"}, 22016),
    ({"cache-control": "max-age=100", "Age": "40"}, 60),
    ({"Cache-Control": "max-age=100", "Age": "400"}, 0),
    ({"Cache-Control": "no-store, max-age=100"}, 0),
    ({"Cache-Control": "no-cache"}, 0),
    ({"Cache-Control": "max-age=soon"}, 0),
    ({}, 0),
])
def test_max_age(headers: dict[str, str], seconds: float):
    assert pushauth.max_age(headers) == seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_caching_request_refetches_after_max_age(issuer: Issuer):
    from google.auth.transport import requests as grequests

    clock = FakeClock()
    req = pushauth.CachingRequest(grequests.Request(), clock=clock)
    first = req(issuer.certs_url)
    assert first.status == 200 and issuer.kid.encode() in first.data
    clock.now += HOUR - 1
    assert req(issuer.certs_url).data == first.data and issuer.fetches == 1
    clock.now += 2
    req(issuer.certs_url)
    assert issuer.fetches == 2
