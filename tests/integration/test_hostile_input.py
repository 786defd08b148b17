"""Hostile input, property-based: every HTTP and push endpoint of every deployable app answers 4xx (never
5xx) to whatever body, header, path, query or method it is sent, and writes and publishes nothing for it.

The apps are the real ones (ingress, launcher, dashboard, the dev all-in-one, and the job-events and
reconciler functions through functions-framework) wired to the emulators, on a fresh project and
deployment with a seeded run and retraining rule. Each example's Firestore commits and Pub/Sub publishes
are counted by pass-through spies on the apps' own clients; after each test the whole emulator state is
compared with the seed's and every topic's watch subscription is drained, which also covers the function
apps' clients. Requests that are correctly signed or carry the right token are generated from a valid
request with one defect applied, so they too must be refused without effect.

Deterministic (derandomize, no example database); `LBTRAIN_HOSTILE_EXAMPLES` scales the number of examples.
"""

from __future__ import annotations

import base64
import json
import os
import string
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import functions_framework
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbtrain import pipelines, signature
from lbtrain.adapters.pubsub_bus import topology
from lbtrain.api.apps import dashboard_app, dev_app, ingress_app, launcher_app
from lbtrain.api.push import all_stages
from lbtrain.config import Config, to_env
from lbtrain.deps import Deps
from lbtrain.messages import StepMessage, encode_push
from tests.conftest import ROOT, fresh_id

TOKEN = "hostile-api-token-0123456789abcdef"
SECRET = "hostile-webhook-secret-0123456789abcdef"
SCALE = float(os.environ.get("LBTRAIN_HOSTILE_EXAMPLES", "1"))
MODEL_TYPE = "text_single_classification"
SEED_RUN = fresh_id("run")  # the seeded run and rule: module-level so strategies can name them
SEED_PROJECT = fresh_id("proj")


def examples(n: int) -> Any:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# -- the world: real apps on the emulators, with spies on their clients -------------------------------

@dataclass(repr=False)
class World:
    config: Config
    deps: Deps
    clients: dict[str, FlaskClient]
    seed_run: str
    seed_project: str
    subscriptions: list[str]
    commits: list[str] = field(default_factory=list)
    publishes: list[str] = field(default_factory=list)
    baseline: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"World({self.config.project}/{self.config.deployment_name})"

    def effects(self) -> list[str]:
        return [*self.commits, *self.publishes]


def _spy_firestore(world_commits: list[str], db: Any) -> None:
    """Count commits that carry writes (a read-only transaction commits nothing) on this client."""
    api = db._firestore_api

    def wrap(name: str) -> None:
        real = getattr(api, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get("request") or (args[0] if args else None) or {}
            writes = request.get("writes") if isinstance(request, dict) else getattr(request, "writes", None)
            if writes:
                world_commits.append(f"firestore {name}: {len(writes)} write(s)")
            return real(*args, **kwargs)

        setattr(api, name, spy)

    wrap("commit")
    wrap("batch_write")


def _spy_bus(world_publishes: list[str], bus: Any) -> None:
    real = bus.publish

    def spy(name: str, data: dict[str, Any], attributes: dict[str, str] | None = None) -> str:
        world_publishes.append(f"publish {name}: {data}")
        return real(name, data, attributes)

    bus.publish = spy


def firestore_state(db: Any) -> dict[str, Any]:
    """Every document of the project: path → update time (root collections, then the subcollections)."""
    state: dict[str, Any] = {}
    for coll in db.collections():
        for snap in coll.stream():
            state[snap.reference.path] = snap.update_time
    for group in ("steps", "labels", "shards"):
        for snap in db.collection_group(group).stream():
            state[snap.reference.path] = snap.update_time
    return state


def drain(subscriptions: list[str]) -> list[str]:
    from google.cloud import pubsub_v1

    sub = pubsub_v1.SubscriberClient()
    got = []
    for path in subscriptions:
        while True:
            resp = sub.pull(request={"subscription": path, "max_messages": 100, "return_immediately": True},
                            timeout=10)
            if not resp.received_messages:
                break
            got += [f"{path}: {m.message.data[:200]!r}" for m in resp.received_messages]
            sub.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in resp.received_messages]})
    return got


@pytest.fixture(scope="module")
def world(emulator_hosts: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    root = tmp_path_factory.mktemp("hostile")
    config = Config(deployment_name=fresh_id("dep"), project=fresh_id("proj"), artifact_root=str(root / "artifacts"),
                    labelbox_dir=str(root / "labelbox"), state_dir=str(root / "state"), api_token=TOKEN,
                    labelbox_webhook_secret=SECRET, job_module="lbtrain.noop_job", job_python=sys.executable,
                    stale_after_seconds=3600.0, max_body_bytes=64 * 1024,
                    pubsub_emulator_host=emulator_hosts["PUBSUB_EMULATOR_HOST"],
                    firestore_emulator_host=emulator_hosts["FIRESTORE_EMULATOR_HOST"])
    (root / "labelbox" / "model_runs").mkdir(parents=True)
    (root / "artifacts").mkdir()
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    subscriptions = []
    for spec in topology(config.deployment_name, all_stages()):
        topic = publisher.topic_path(config.project, spec.topic_id)
        publisher.create_topic(name=topic)
        path = subscriber.subscription_path(config.project, spec.topic_id + "-watch")
        subscriber.create_subscription(request={"name": path, "topic": topic})
        subscriptions.append(path)

    deps = Deps(config)
    seed_run = deps.store.create_run(run_id=SEED_RUN, model_type=MODEL_TYPE, model_run_id=fresh_id("mr"),
                                     model_id="m1", params={}, trigger={"source": "api"},
                                     stages=pipelines.get(MODEL_TYPE).stages, delivery_key=None).run_id
    seed_project = SEED_PROJECT
    deps.triggers.put_rule(seed_project, {"model_type": MODEL_TYPE, "model_id": "m1", "min_labels": 1000,
                                          "min_interval_seconds": 0.0, "params": {}, "enabled": True})

    saved = dict(os.environ)
    os.environ.update(to_env(config))
    try:
        functions, function_deps = {}, []
        for name, target, kind in (("job_events", "on_job_event", "cloudevent"), ("reconciler", "reconcile", "http")):
            functions[name] = functions_framework.create_app(target, str(ROOT / f"functions/{name}/main.py"), kind)
            function_deps.append(sys.modules["main"]._deps)  # functions-framework loads each as `main`
    finally:
        os.environ.clear()
        os.environ.update(saved)
    # The push endpoints as deployed: behind Cloud Run IAM (forwarded claims) and on the public ingress
    # (Google's signature checked here; the certificates URL answers nothing, so only a token that is a
    # well-formed JWT would ever reach it).
    sa = "push@proj.iam.gserviceaccount.com"
    iam = Deps(config.with_overrides(push_auth="cloudrun-iam", push_service_account=sa, push_audience="aud"))
    oidc = Deps(config.with_overrides(push_auth="oidc", push_service_account=sa, push_audience="aud",
                                      push_certs_url="http://127.0.0.1:9/certs"))
    iam.store, iam.bus, oidc.store, oidc.bus = deps.store, deps.bus, deps.store, deps.bus
    apps = {"ingress": ingress_app(deps), "launcher": launcher_app(deps), "dashboard": dashboard_app(deps),
            "dev": dev_app(deps), "launcher_iam": launcher_app(iam), "ingress_oidc": ingress_app(oidc), **functions}
    w = World(config, deps, {name: app.test_client() for name, app in apps.items()}, seed_run, seed_project,
              subscriptions)
    _spy_firestore(w.commits, deps.store.db)
    _spy_bus(w.publishes, deps.bus)
    for own in function_deps:  # the functions' own Deps (their main.py's `_deps`)
        _spy_firestore(w.commits, own.store.db)
        _spy_bus(w.publishes, own.bus)
    w.baseline = firestore_state(deps.store.db)
    yield w
    for path in subscriptions:
        try:
            subscriber.delete_subscription(subscription=path)
        except gexc.NotFound:
            pass


@pytest.fixture
def fresh_world(world: World) -> Iterator[World]:
    """The world, checked after the test: no document changed, no message on any topic, no artifact."""
    world.commits.clear()
    world.publishes.clear()
    yield world
    assert firestore_state(world.deps.store.db) == world.baseline
    assert drain(world.subscriptions) == []
    assert not any(Path(world.config.artifact_root).iterdir())


# -- strategies ---------------------------------------------------------------------------------------------

LATIN1_HEADER = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                        max_size=80)
ODD_STRINGS = st.sampled_from(["", ".", "..", "__x__", "a/b", "..%2F..", "\u0000", "\ud800", "\udfff", "x" * 201,
                               "x" * 5000, "\u202e", "é", "☃" * 50, " ", "%ff", "runs", "null", "[]", "{}",
                               "-1", "1e400", "NaN", "<script>alert(1)</script>", "' OR 1=1 --"])
TEXT = st.one_of(st.text(max_size=30), ODD_STRINGS)
HUGE_INTS = st.sampled_from([2 ** 63, -(2 ** 63) - 1, 10 ** 30, 2 ** 64 + 1, 10 ** 4000])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), HUGE_INTS, st.floats(), TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(TEXT, kids, max_size=4)), max_leaves=25)


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):
        return b"null"


@st.composite
def nested(draw: Callable[..., Any]) -> bytes:
    depth = draw(st.sampled_from([63, 64, 65, 100, 1000, 50_000]) | st.integers(1, 3000))
    opener = draw(st.sampled_from([b"[", b'{"a":', b'{"params":', b'{"message":']))
    closer = {b"[": b"]"}.get(opener, b"}")
    body = opener * depth + draw(st.sampled_from([b"1", b"", b'"x"'])) + closer * draw(st.sampled_from([0, depth]))
    return body


BYTES_BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"\xff\xfe", b"\xc3\x28", b'{"a": "\xff"}', b"null", b"[]", b"{}", b"1e400", b"NaN",
                     b"-Infinity", b"9" * 5000, b'"\\ud800"', b'{"\\ud800": 1}', b'{"a": 1, "a": 2}',
                     b"\x00" * 100, b"{" * 10 + b"}" * 10, b"x" * 70_000]),
    JSON_VALUES.map(_dumps),
    nested(),
)


def _envelope(data: bytes, attributes: Any = None, message_id: Any = "1") -> bytes:
    return json.dumps({"message": {"data": base64.b64encode(data).decode(), "attributes": attributes or {},
                                   "messageId": message_id}, "subscription": "projects/p/subscriptions/s"}).encode()


PUSH_BODIES = st.one_of(
    BYTES_BODIES,
    st.builds(_envelope, BYTES_BODIES),
    st.builds(_envelope, JSON_VALUES.map(_dumps), st.dictionaries(TEXT, TEXT, max_size=3) | JSON_VALUES, SCALARS),
    st.builds(lambda m: json.dumps({"message": m}).encode(), JSON_VALUES),
    st.builds(lambda d: json.dumps({"message": {"data": d}}).encode(), TEXT),
)

def _jwt(header: Any, payload: Any, sig: str) -> str:
    def seg(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{seg(header)}.{seg(payload)}.{sig}"


FORGED = st.builds(lambda claims, sig: {"Authorization": "Bearer " + _jwt({"alg": "none"}, claims, sig)},
                   st.one_of(JSON_VALUES, st.fixed_dictionaries({
                       "iss": st.sampled_from(["https://accounts.google.com", "evil"]),
                       "email": st.sampled_from(["push@proj.iam.gserviceaccount.com", "x@y"]),
                       "email_verified": st.booleans(), "aud": st.sampled_from(["aud", "other", ""]),
                       "exp": st.one_of(st.integers(), st.floats(), HUGE_INTS, TEXT)})),
                   st.sampled_from(["SIGNATURE_REMOVED_BY_GOOGLE", "c2ln", ""]))
MALFORMED_TOKENS = st.builds(lambda t: {"Authorization": f"Bearer {t}", "X-Serverless-Authorization": f"Bearer {t}"},
                             st.one_of(TEXT, st.sampled_from(["a.b.c", "..", "e30.e30.", "W1tbW1tb.e30.x",
                                                              "_-_.***.x", "eyJ.eyJ.eyJ"])))
PUSH_AUTH = st.one_of(st.just({}), FORGED, MALFORMED_TOKENS)
AUTH = st.sampled_from([{}, {"Authorization": "Bearer wrong"}, {"X-API-Token": "wrong"},
                        {"Authorization": "Basic " + base64.b64encode(b"a:b").decode()}, {"Authorization": "Bearer"},
                        {"Authorization": "Bearer a.b.c"}, {"Authorization": "Bearer " + "x" * 9000},
                        {"X-API-Token": TOKEN + "x"}, {"Authorization": "bearer  " + TOKEN[:-1]}])
SIGNATURES = st.one_of(
    st.just({}),
    st.fixed_dictionaries({signature.SHA1_HEADER: LATIN1_HEADER}),
    st.fixed_dictionaries({signature.SHA256_HEADER: LATIN1_HEADER}),
    st.sampled_from([{signature.SHA256_HEADER: "sha256="}, {signature.SHA1_HEADER: "sha1=" + "0" * 40},
                     {signature.SHA256_HEADER: "sha256=" + "0" * 64, signature.SHA1_HEADER: "garbage"},
                     {signature.SHA256_HEADER: "sha256=" + "é" * 64}]),
)
EXTRA_HEADERS = st.dictionaries(
    st.sampled_from(["X-Labelbox-Id", "X-Labelbox-Event", "Idempotency-Key", "Content-Type", "X-Cloud-Trace-Context",
                     "Ce-Id", "Ce-Type", "Ce-Source", "Ce-Specversion", "Content-Encoding", "X-Forwarded-For",
                     "Accept", "X-Odd"]),
    st.one_of(LATIN1_HEADER, st.just("x" * 10_000), st.sampled_from(["application/json", "text/plain", "\x01"])),
    max_size=4)
METHODS = st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
                    st.text(string.ascii_uppercase, min_size=1, max_size=12))

ROUTES = {
    "ingress": ["/model_run", "/models", "/webhooks/labelbox", "/runs", "/runs/{id}", "/runs/{id}/cancel",
                "/runs/{id}/retry", "/triggers", "/triggers/{id}", "/push/runs", "/push/dead-letter", "/healthz"],
    "launcher": ["/push/step/{id}", "/push/step/etl", "/push/step/train", "/healthz"],
    "dashboard": ["/", "/dashboard/", "/dashboard/api/runs", "/dashboard/runs/{id}", "/dashboard/api/runs/{id}",
                  "/dashboard/runs/{id}/steps/{id}/log", "/dashboard/api/runs/{id}/{id}",
                  "/dashboard/api/runs/{id}/cancel", "/dashboard/models/{id}", "/dashboard/static/{id}"],
    "dev": ["/runs", "/model_run", "/webhooks/labelbox", "/push/runs", "/push/job-events", "/push/dead-letter",
            "/push/step/{id}", "/dashboard/api/runs/{id}/retry", "/triggers/{id}"],
    "launcher_iam": ["/push/step/etl", "/push/step/{id}"],
    "ingress_oidc": ["/push/runs", "/push/dead-letter"],
    "job_events": ["/", "/{id}"],
    "reconciler": ["/{id}", "/x/{id}"],
}


@st.composite
def paths(draw: Callable[..., Any], app: str, seed: list[str]) -> tuple[str, dict[str, Any]]:
    """A path for `app` and environ overrides (a raw, possibly non-UTF-8 PATH_INFO / QUERY_STRING)."""
    template = draw(st.sampled_from(ROUTES[app]))
    ids = st.one_of(TEXT.filter(lambda s: "?" not in s and "#" not in s), st.sampled_from(seed + [MODEL_TYPE]))
    path = template
    while "{id}" in path:
        path = path.replace("{id}", draw(ids).replace("/", "%2F"), 1)
    query = draw(st.one_of(st.just(""), st.dictionaries(st.sampled_from(["status", "model_type", "limit", "before",
                                                                         "model_run_id", "x"]), TEXT, max_size=3)))
    overrides: dict[str, Any] = {}
    raw = draw(st.sampled_from([None, None, None, "path", "query", "both"]))
    if raw in ("path", "both"):
        overrides["PATH_INFO"] = (path.encode("utf-8", "surrogatepass") + draw(st.binary(min_size=1, max_size=8))
                                  ).decode("latin-1")
    if raw in ("query", "both"):
        overrides["QUERY_STRING"] = draw(st.binary(max_size=40)).decode("latin-1")
    if query:
        path += "?" + urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})
    return path.encode("utf-8", "surrogatepass").decode("latin-1") if not path.isascii() else path, overrides


@dataclass
class Sent:
    status: int
    body: bytes


def send(world: World, app: str, method: str, path: str, headers: dict[str, str], body: bytes,
         overrides: dict[str, Any] | None = None) -> Sent:
    world.commits.clear()
    world.publishes.clear()
    resp = world.clients[app].open(path, method=method, headers=headers, data=body,
                                   environ_overrides=overrides or {})
    sent = Sent(resp.status_code, resp.get_data())
    assert sent.status < 500, (app, method, path, headers, body[:300], sent.status, sent.body[:500])
    assert world.effects() == [], (app, method, path, body[:300], sent.status, world.effects())
    return sent


# -- random requests at every app --------------------------------------------------------------------------

def _random_request(app: str) -> Any:
    @st.composite
    def build(draw: Callable[..., Any]) -> tuple[str, str, dict[str, str], bytes, dict[str, Any]]:
        method = draw(st.one_of(st.just("GET" if app == "dashboard" else "POST"), METHODS))
        path, overrides = draw(paths(app, [SEED_RUN, SEED_PROJECT]))
        auth = draw(PUSH_AUTH) if app in ("launcher_iam", "ingress_oidc") and draw(st.booleans()) else draw(AUTH)
        headers = {**auth, **draw(SIGNATURES), **draw(EXTRA_HEADERS)}
        body = draw(PUSH_BODIES if app in ("launcher", "launcher_iam", "ingress_oidc", "job_events", "reconciler")
                    else BYTES_BODIES)
        return method, path, headers, body, overrides

    return build()


@pytest.mark.parametrize("app", ["ingress", "launcher", "dashboard", "dev", "launcher_iam", "ingress_oidc",
                                 "job_events", "reconciler"])
def test_random_requests_are_refused_without_effect(fresh_world: World, app: str) -> None:
    counts = {"ingress": 500, "launcher": 250, "dashboard": 350, "dev": 400, "launcher_iam": 150, "ingress_oidc": 150,
              "job_events": 250, "reconciler": 60}

    @examples(counts[app])
    @given(_random_request(app))
    def run(request: tuple[str, str, dict[str, str], bytes, dict[str, Any]]) -> None:
        method, path, headers, body, overrides = request
        send(fresh_world, app, method, path, headers, body, overrides)

    run()


# -- correctly signed / authorised, but semantically bad ----------------------------------------------------------

def _signed(body: bytes, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**signature.headers(SECRET, body), "Content-Type": "application/json", **(extra or {})}


BAD_IDS = st.one_of(st.sampled_from(["", ".", "..", "__x__", "a/b", "a b", "x" * 201, "é", "\u0000", "\ud800"]),
                    st.integers(), st.none(), st.lists(st.integers(), max_size=2), st.just({"id": ".."}))
BAD_TYPES = st.one_of(st.sampled_from(["", "nope", MODEL_TYPE.upper(), MODEL_TYPE + " ", "__x__"]), st.integers(),
                      st.booleans(), st.lists(st.just(MODEL_TYPE), max_size=1))
BAD_HEADERS = st.one_of(
    st.fixed_dictionaries({"X-Labelbox-Id": st.sampled_from(["x" * 257, "é", "a\x01b", "x" * 9000])}),
    st.fixed_dictionaries({"X-Labelbox-Event": st.sampled_from(["x" * 257, "é\x7f"])}),
)
def _deep_json(n: int) -> str:
    return "[" * n + "]" * n


@st.composite
def bad_model_run(draw: Callable[..., Any]) -> tuple[bytes, dict[str, str]]:
    """A Labelbox model-run delivery, correctly signed, with exactly one defect."""
    body: dict[str, Any] = {"modelId": "m1", "modelRunId": fresh_id("mr"), "modelType": MODEL_TYPE}
    defect = draw(st.sampled_from(["type", "run", "model", "missing", "header", "deep", "shape"]))
    headers: dict[str, str] = {"X-Labelbox-Id": fresh_id("d")}
    if defect == "type":
        body["modelType"] = draw(BAD_TYPES)
    elif defect == "run":
        body["modelRunId"] = draw(BAD_IDS)
    elif defect == "model":
        body["modelId"] = draw(BAD_IDS.filter(lambda v: v not in ("", None)))
    elif defect == "missing":
        del body[draw(st.sampled_from(["modelRunId", "modelType"]))]
    elif defect == "header":
        headers = draw(BAD_HEADERS)
    elif defect == "shape":
        return _dumps(draw(st.lists(JSON_VALUES, max_size=3) | SCALARS)), _signed(b"", headers)
    if defect == "deep":
        raw = json.dumps(body)[:-1] + ', "extra": ' + _deep_json(draw(st.integers(65, 5000))) + "}"
        return raw.encode(), headers
    raw = json.dumps(body).encode("utf-8", "surrogatepass")
    return raw, headers


@examples(300)
@given(bad_model_run())
def test_signed_but_bad_model_run_is_4xx(fresh_world: World, case: tuple[bytes, dict[str, str]]) -> None:
    body, headers = case
    sent = send(fresh_world, "ingress", "POST", "/model_run", _signed(body, headers), body)
    assert 400 <= sent.status < 500, sent


LABEL_TOPICS = ["LABEL_CREATED", "LABEL_UPDATED", "LABEL_DELETED", "WORKFLOW_ACTION"]


@st.composite
def bad_label_webhook(draw: Callable[..., Any]) -> tuple[bytes, dict[str, str]]:
    """A label webhook for the seeded rule's project, correctly signed, with one defect."""
    topic = draw(st.sampled_from(LABEL_TOPICS))
    body: dict[str, Any] = {"id": fresh_id("lb"), "project": {"id": SEED_PROJECT}, "dataRow": {"id": "dr1"}}
    headers = {"X-Labelbox-Event": topic, "X-Labelbox-Id": fresh_id("d")}
    defect = draw(st.sampled_from(["project", "nolabel", "header", "deep", "shape", "topic"]))
    if defect == "project":
        body["project"] = draw(st.one_of(BAD_IDS.map(lambda v: {"id": v}), BAD_IDS, st.just({})))
    elif defect == "nolabel":
        body.pop("id")
        body["dataRow"] = draw(st.one_of(st.just({}), st.none(), BAD_IDS.map(lambda v: {"id": v}).filter(
            lambda v: v["id"] not in ("",) and isinstance(v["id"], str) is False)))
    elif defect == "header":
        headers.update(draw(BAD_HEADERS))
    elif defect == "topic":
        headers.pop("X-Labelbox-Event")
        body["event"] = draw(st.one_of(st.integers(1), st.just("X" * 65), st.lists(st.just("LABEL_CREATED"),
                                                                                     min_size=1, max_size=1)))
    elif defect == "shape":
        return _dumps(draw(st.lists(JSON_VALUES, max_size=3) | SCALARS)), headers
    if defect == "deep":
        raw = json.dumps(body)[:-1] + ', "extra": ' + _deep_json(draw(st.integers(65, 5000))) + "}"
        return raw.encode(), headers
    return json.dumps(body).encode("utf-8", "surrogatepass"), headers


@examples(250)
@given(bad_label_webhook())
def test_signed_but_bad_label_webhook_is_4xx(fresh_world: World, case: tuple[bytes, dict[str, str]]) -> None:
    body, headers = case
    sent = send(fresh_world, "ingress", "POST", "/webhooks/labelbox", _signed(body, headers), body)
    assert 400 <= sent.status < 500, sent


BAD_PARAMS = st.one_of(
    st.integers(17, 40).map(lambda n: json.loads('{"a":' * n + "1" + "}" * n)),
    st.integers(16, 40).map(lambda n: {"a": json.loads("[" * n + "]" * n)}),
    st.sampled_from([{"x": 2 ** 63}, {"x": -(2 ** 63) - 1}, {"__name__": 1}, {"": 1}, {"k" * 300: 1},
                     {"a": ["x" * 70_000]}, [], "params", 1, {"a": {"__x__": [1]}}]),
)


@st.composite
def bad_api_run(draw: Callable[..., Any]) -> tuple[bytes, dict[str, str]]:
    """A REST run request with the right token and exactly one defect."""
    body: dict[str, Any] = {"model_type": MODEL_TYPE, "model_run_id": fresh_id("mr")}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    defect = draw(st.sampled_from(["type", "run", "model", "params", "key", "header", "deep", "shape"]))
    if defect == "type":
        body["model_type"] = draw(BAD_TYPES)
    elif defect == "run":
        body["model_run_id"] = draw(BAD_IDS)
    elif defect == "model":
        body["model_id"] = draw(BAD_IDS.filter(lambda v: v not in ("", None, 0) and v != []))
    elif defect == "params":
        body["params"] = draw(BAD_PARAMS)
    elif defect == "key":
        body["idempotency_key"] = draw(st.one_of(st.integers(), st.just("k" * 257), st.just({"a": [1]}),
                                                 st.lists(st.integers(), min_size=1, max_size=2)))
    elif defect == "header":
        headers["Idempotency-Key"] = draw(st.sampled_from(["k" * 257, "é", "a\x01"]))
    elif defect == "shape":
        return _dumps(draw(st.lists(JSON_VALUES, max_size=3) | SCALARS)), headers
    if defect == "deep":
        raw = json.dumps(body)[:-1] + ', "params": {"x": ' + _deep_json(draw(st.integers(65, 5000))) + "}}"
        return raw.encode(), headers
    return _dumps(body), headers


@examples(250)
@given(bad_api_run(), st.sampled_from(["ingress", "dev"]))
def test_authorised_but_bad_run_request_is_4xx(fresh_world: World, case: tuple[bytes, dict[str, str]],
                                               app: str) -> None:
    body, headers = case
    sent = send(fresh_world, app, "POST", "/runs", headers, body)
    assert 400 <= sent.status < 500, sent


@examples(150)
@given(st.sampled_from(["ingress", "dev", "dashboard"]), st.sampled_from(["cancel", "retry", "get", "page", "log"]),
       st.one_of(BAD_IDS.filter(lambda v: isinstance(v, str) and v != "" and "/" not in v), st.just("nosuchrun")))
def test_authorised_actions_on_odd_run_ids_are_4xx(fresh_world: World, app: str, action: str, run_id: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if app == "dashboard":
        path = {"cancel": "/dashboard/api/runs/{}/cancel", "retry": "/dashboard/api/runs/{}/retry",
                "get": "/dashboard/api/runs/{}", "page": "/dashboard/runs/{}",
                "log": "/dashboard/runs/{}/steps/etl/log"}[action]
    else:
        path = {"cancel": "/runs/{}/cancel", "retry": "/runs/{}/retry", "get": "/runs/{}", "page": "/runs/{}",
                "log": "/triggers/{}"}[action]
    method = "POST" if action in ("cancel", "retry") else "GET"
    sent = send(fresh_world, app, method, path.format(quote(run_id.encode("utf-8", "surrogatepass"))), headers, b"")
    assert 400 <= sent.status < 500, sent


@examples(150)
@given(st.one_of(JSON_VALUES, st.fixed_dictionaries({"model_type": BAD_TYPES, "model_id": st.just("m1")}),
                 st.fixed_dictionaries({"model_type": st.just(MODEL_TYPE), "model_id": st.just("m1"),
                                        "min_labels": st.one_of(st.integers(max_value=0), HUGE_INTS, st.floats())}),
                 st.fixed_dictionaries({"model_type": st.just(MODEL_TYPE), "model_id": st.just("m1"),
                                        "min_interval_seconds": st.one_of(st.integers(max_value=-1), HUGE_INTS,
                                                                          st.just(10 ** 300))}),
                 st.fixed_dictionaries({"model_type": st.just(MODEL_TYPE), "model_id": st.just("m1"),
                                        "params": BAD_PARAMS})),
       st.one_of(st.just(SEED_PROJECT), st.just("nosuchproject"), BAD_IDS.filter(lambda v: isinstance(v, str) and v and
                                                                           "/" not in v)))
def test_authorised_but_bad_rule_is_4xx(fresh_world: World, rule: Any, project: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    path = "/triggers/" + quote(project.encode("utf-8", "surrogatepass"))
    sent = send(fresh_world, "ingress", "PUT", path, headers, _dumps(rule))
    assert 400 <= sent.status < 500, sent


@st.composite
def bad_push(draw: Callable[..., Any]) -> tuple[str, bytes]:
    """Pub/Sub push envelopes of the right shape whose message can never succeed (unknown run, bad fields)."""
    target = draw(st.sampled_from(["runs", "step", "job-events", "dead-letter"]))
    if target == "runs":
        data = draw(st.one_of(
            st.fixed_dictionaries({"model_type": BAD_TYPES, "model_run_id": st.just("mr1")}),
            st.fixed_dictionaries({"model_type": st.just(MODEL_TYPE), "model_run_id": BAD_IDS}),
            st.fixed_dictionaries({"model_type": st.just(MODEL_TYPE), "model_run_id": st.just("mr1"),
                                   "params": BAD_PARAMS}),
        ))
        attrs = draw(st.one_of(st.just({}), st.just({"kind": "release"})))
        if attrs:
            data = draw(st.one_of(st.just({}), st.fixed_dictionaries({"release_run_id": BAD_IDS}),
                                  st.just({"release_run_id": "nosuchrun"})))
        return "/push/runs", _dumps(encode_push(data, attrs))
    if target == "step":
        stage = draw(st.sampled_from(all_stages()))
        data = draw(st.one_of(
            st.fixed_dictionaries({"run_id": st.just("nosuchrun"), "stage": st.just(stage),
                                   "attempt": st.integers(1, 3)}),
            st.fixed_dictionaries({"run_id": st.just(SEED_RUN), "stage": st.just(stage),
                                   "attempt": st.one_of(st.integers(max_value=0), HUGE_INTS, st.text(max_size=3),
                                                        st.floats())}),
            st.fixed_dictionaries({"run_id": st.just(SEED_RUN), "stage": st.just(stage), "attempt": st.just(1),
                                   "action": TEXT.filter(lambda a: a not in ("launch", "cancel", ""))}),
            st.fixed_dictionaries({"run_id": BAD_IDS, "stage": st.just(stage), "attempt": st.just(1)}),
        ))
        return f"/push/step/{stage}", _dumps(encode_push(data, StepMessage("x", stage, 1).attributes()))
    if target == "job-events":
        data = draw(st.one_of(
            st.fixed_dictionaries({"job_id": TEXT, "state": TEXT}),
            st.fixed_dictionaries({"job_id": st.just("nosuchjob"), "state": st.sampled_from(
                ["SUCCEEDED", "FAILED", "CANCELLED"]), "run_id": st.just(SEED_RUN), "stage": st.just("etl"),
                "attempt": st.integers(1, 3)}),
            st.fixed_dictionaries({"resource": st.one_of(JSON_VALUES, st.just({"type": "ml_job", "labels": {}}),
                                                         st.just({"type": "ml_job",
                                                                  "labels": {"job_id": "nosuchjob"}}))}),
        ))
        return "/push/job-events", _dumps(encode_push(data))
    data = draw(st.one_of(st.fixed_dictionaries({"run_id": st.one_of(BAD_IDS, st.just("nosuchrun"))}), JSON_VALUES))
    return "/push/dead-letter", _dumps(encode_push(data) if not isinstance(data, bytes) else data)


@examples(300)
@given(bad_push())
def test_well_formed_push_of_bad_messages_has_no_effect(fresh_world: World, case: tuple[str, bytes]) -> None:
    path, body = case
    send(fresh_world, "dev", "POST", path, {"Content-Type": "application/json"}, body)


# -- the reproduced failures, by name ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/model_run", "/webhooks/labelbox", "/runs", "/push/runs", "/push/job-events",
                                  "/push/step/etl", "/push/dead-letter", "/triggers/p1"])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_tens_of_thousands_deep_body_is_400_naming_the_limit(fresh_world: World, path: str, opener: bytes) -> None:
    body = opener * (50_000 if opener == b"[" else 12_000)  # within the world's 64 KiB body limit
    headers = {**_signed(body), "Authorization": f"Bearer {TOKEN}"}
    sent = send(fresh_world, "dev", "PUT" if path.startswith("/triggers") else "POST", path, headers, body)
    assert sent.status == 400, sent
    assert b"nested deeper than the limit of 64 levels" in sent.body, sent


def test_deep_message_data_in_a_push_is_400(fresh_world: World) -> None:
    sent = send(fresh_world, "dev", "POST", "/push/runs", {"Content-Type": "application/json"},
                _envelope(b"[" * 40_000))
    assert sent.status == 400, sent
    assert b"nested deeper than the limit of 64 levels" in sent.body


@pytest.mark.parametrize(("path", "raw"), [("/runs/x", b"/runs/\xff\xfe"),
                                          ("/dashboard/runs/x", b"/dashboard/runs/\xc3")])
def test_non_utf8_path_is_400(fresh_world: World, path: str, raw: bytes) -> None:
    sent = send(fresh_world, "dev", "GET", path, {"Authorization": f"Bearer {TOKEN}"}, b"",
                {"PATH_INFO": raw.decode("latin-1")})
    assert sent.status == 400, sent
    assert b"not valid UTF-8" in sent.body
