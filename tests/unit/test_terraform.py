"""infra/terraform, checked offline against the code it deploys (no provider downloads here).

Every .tf file is parsed with python-hcl2; names, env vars, routes, filters and indexes are
compared with what lbtrain itself builds or reads (pubsub_bus.topology, config.from_env, the
Flask apps, parse_job_event, FirestoreStore's queries, cloudbuild.yaml), never with copies.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import subprocess
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import hcl2  # python-hcl2, in the dev extra
import pytest
import yaml

from lbtrain import config as configmod
from lbtrain.adapters import firestore_store
from lbtrain.adapters.pubsub_bus import topology
from lbtrain.api import apps
from lbtrain.api.push import all_stages
from lbtrain.config import Config
from lbtrain.deps import Deps
from lbtrain.messages import BadMessage, encode_push, parse_job_event

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "infra" / "terraform"
TERRAFORM = Path("/usr/local/bin/terraform")
SAMPLE = {"project": "proj-1", "region": "europe-west4", "image_tag": "abc123"}


# -- loading and evaluating just enough HCL ------------------------------------------------------

@dataclass
class Tf:
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocks: dict[str, list[Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def resource(self, rtype: str, name: str) -> dict[str, Any]:
        assert (rtype, name) in self.resources, f"infra/terraform declares no {rtype}.{name}"
        return self.resources[(rtype, name)]

    def of_type(self, rtype: str) -> dict[str, dict[str, Any]]:
        return {n: body for (t, n), body in self.resources.items() if t == rtype}

    def defaults(self, **overrides: Any) -> dict[str, Any]:
        values = {name: v.get("default") for name, v in self.variables.items()}
        values.update(SAMPLE)
        values.update(overrides)
        return values


@cache
def load() -> Tf:
    from hcl2.utils import SerializationOptions

    opts = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    tf = Tf()
    files = sorted(TF_DIR.glob("*.tf"))
    assert files, f"no .tf files under {TF_DIR}"
    for path in files:
        text = path.read_text()
        tf.texts[path.name] = text
        doc = hcl2.loads(text, serialization_options=opts)
        for entry in doc.get("resource", []):
            for rtype, named in entry.items():
                for name, body in named.items():
                    assert (rtype, name) not in tf.resources, f"{rtype}.{name} declared twice"
                    tf.resources[(rtype, name)] = body
        for entry in doc.get("locals", []):
            for key, value in entry.items():
                assert key not in tf.locals, f"local.{key} declared twice"
                tf.locals[key] = value
        for entry in doc.get("variable", []):
            tf.variables.update(entry)
        for key in ("terraform", "provider", "data", "output"):
            tf.blocks.setdefault(key, []).extend(doc.get(key, []))
    return tf


class Unresolved(ValueError):
    pass


@dataclass
class Ctx:
    tf: Tf
    vars: dict[str, Any]
    each_key: Any = None
    each_value: Any = None


_STEP = re.compile(r'\.?([A-Za-z_][\w-]*)|\["([^"]+)"\]|\[([\w.]+)\]')
_TERNARY_DEFAULT = re.compile(r'^var\.(\w+) != "" \? var\.\1 : "(.*)"$')
_JOIN = re.compile(r'^join\("([^"]*)", ([\w.]+)\)$')


def _is_whole_expr(s: str) -> bool:
    if not (s.startswith("${") and s.endswith("}")):
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "}" and depth == 0:
            return i == len(s) - 1
    return False


def render(value: Any, ctx: Ctx) -> Any:
    """Evaluate the few expression shapes infra/terraform uses; anything else is Unresolved."""
    if isinstance(value, dict):
        return {k: render(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, ctx) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    if _is_whole_expr(value):
        return resolve(value[2:-1], ctx)
    return re.sub(r"\$\{([^{}]*)\}", lambda m: str(resolve(m.group(1), ctx)), value)


def resolve(expr: str, ctx: Ctx) -> Any:
    expr = expr.strip()
    m = _TERNARY_DEFAULT.match(expr)
    if m:
        own = ctx.vars[m.group(1)]
        return own if own != "" else render(m.group(2), ctx)
    m = _JOIN.match(expr)
    if m:
        return m.group(1).join(str(v) for v in resolve(m.group(2), ctx))
    parts, pos = [], 0
    while pos < len(expr):
        m = _STEP.match(expr, pos)
        if not m or (pos == 0 and m.group(1) is None):
            raise Unresolved(expr)
        name, literal, nested = m.groups()
        parts.append(name or literal or resolve(nested, ctx))
        pos = m.end()
    root, rest = parts[0], parts[1:]
    if root.startswith("google_"):
        return "${" + expr + "}"  # a resource attribute: known only at apply time
    if root == "var":
        value: Any = ctx.vars[rest[0]]
        rest = rest[1:]
    elif root == "local":
        value = render(ctx.tf.locals[rest[0]], ctx)
        rest = rest[1:]
    elif root == "each":
        value = {"key": ctx.each_key, "value": ctx.each_value}
    else:
        raise Unresolved(expr)
    for part in rest:
        value = value[part]
    return value


def resolve_for_each(expr: str, ctx: Ctx) -> dict[str, Any] | list[Any]:
    """`{for k, v in local.x : k => v if v != ""}`, `toset(local.x.y)` or a plain reference."""
    inner = expr[2:-1] if _is_whole_expr(expr) else expr
    m = re.fullmatch(r'\{for k, v in ([\w.]+) : k => v if v != ""\}', inner)
    if m:
        return {k: v for k, v in resolve(m.group(1), ctx).items() if v != ""}
    m = re.fullmatch(r"toset\((.+)\)", inner)
    if m:
        return sorted(set(resolve(m.group(1), ctx)))
    return resolve(inner, ctx)


def resource_ref(expr: str) -> tuple[str, str, str | None, str]:
    """`${type.name["key"].attr}` → (type, name, key, attr)."""
    m = re.fullmatch(r'\$\{(google_\w+)\.(\w+)(?:\["([^"]+)"\])?\.(\w+)\}', expr)
    assert m, f"not a resource attribute reference: {expr!r}"
    return m.group(1), m.group(2), m.group(3), m.group(4)


def one(blocks: list[Any] | None, what: str) -> dict[str, Any]:
    assert blocks and len(blocks) == 1, f"expected exactly one {what} block, got {blocks!r}"
    return blocks[0]


# -- the deployment as Terraform would create it ------------------------------------------------

@dataclass
class Service:
    """One Cloud Run service instance (a for_each key expanded)."""

    resource: str
    key: str | None
    body: dict[str, Any]
    ctx: Ctx

    @property
    def container(self) -> dict[str, Any]:
        return one(one(self.body["template"], "template")["containers"], "containers")

    def render(self, value: Any) -> Any:
        return render(value, self.ctx)

    @property
    def name(self) -> str:
        return self.render(self.body["name"])

    def env(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(plain env name → rendered value, secret env name → secret_key_ref)."""
        plain: dict[str, Any] = {}
        secret: dict[str, dict[str, Any]] = {}

        def add(name: str, entry: dict[str, Any], ctx: Ctx) -> None:
            assert name not in plain and name not in secret, f"{self.name}: env {name} set twice"
            if "value_source" in entry:
                ref = one(one(entry["value_source"], "value_source")["secret_key_ref"], "secret_key_ref")
                secret[name] = {"secret": ref["secret"], "version": ref["version"], "each": ctx.each_value}
            else:
                plain[name] = render(entry["value"], ctx)

        for entry in self.container.get("env", []):
            add(self.render(entry["name"]), entry, self.ctx)
        for dyn in self.container.get("dynamic", []):
            if "env" not in dyn:
                continue
            spec = dyn["env"]
            content = one(spec["content"], "dynamic env content")
            items = resolve_for_each(spec["for_each"], self.ctx)
            pairs = items.items() if isinstance(items, dict) else ((v, v) for v in items)
            for key, value in pairs:
                iterator = {"${env.key}": key, "${env.value}": value}
                entry = dict(content)
                if "value" in entry:
                    entry["value"] = iterator[entry["value"]]
                add(iterator[content["name"]], entry,
                    Ctx(self.ctx.tf, self.ctx.vars, each_key=self.ctx.each_key, each_value=value))
        return plain, secret


def services(deployment: str = "prod", **var_overrides: Any) -> dict[str, Service]:
    """Cloud Run services by their push-route key (ingress, launcher-etl, …, job-events, reconciler)."""
    tf = load()
    variables = tf.defaults(deployment_name=deployment, **var_overrides)
    out: dict[str, Service] = {}
    for name, body in tf.of_type("google_cloud_run_v2_service").items():
        base = Ctx(tf, variables)
        if "count" in body:
            gate = re.fullmatch(r"\$\{var\.(\w+) \? 1 : 0\}", body["count"])
            assert gate, f"{name}: count must be a `var.x ? 1 : 0` switch, not {body['count']}"
            if not variables[gate.group(1)]:
                continue
        if "for_each" in body:
            for key in resolve_for_each(body["for_each"], base):
                ctx = Ctx(tf, variables, each_key=key, each_value=key)
                out[f"{name.replace('_', '-')}-{key}"] = Service(name, key, body, ctx)
        else:
            out[name.replace("_", "-")] = Service(name, None, body, base)
    return out


def uri_service_key(expr: str) -> str:
    _, name, key, attr = resource_ref(expr)
    assert attr == "uri", expr
    return name.replace("_", "-") + (f"-{key}" if key else "")


# -- tests ---------------------------------------------------------------------------------------

def test_pins_terraform_and_the_google_provider():
    tf = load()
    block = one(tf.blocks["terraform"], "terraform")
    assert block["required_version"] == ">= 1.5"
    google = one(block["required_providers"], "required_providers")["google"]
    assert google == {"source": "hashicorp/google", "version": "~> 6.0"}


@pytest.mark.parametrize("deployment", ["prod", "team-b"])
def test_topics_and_push_subscriptions_are_the_local_topology(deployment):
    tf = load()
    variables = tf.defaults(deployment_name=deployment)
    base = Ctx(tf, variables)
    assert render(tf.locals["stages"], base) == all_stages()
    expected = {s.topic: s for s in topology(deployment, all_stages())}
    topic_res = tf.resource("google_pubsub_topic", "topic")
    sub_res = tf.resource("google_pubsub_subscription", "push")
    assert topic_res["for_each"] == sub_res["for_each"] == "${local.push_routes}"
    routes = render(tf.locals["push_routes"], base)
    assert set(routes) == set(expected), "Terraform topics differ from lbtrain.adapters.pubsub_bus.topology()"
    config = Config(deployment_name=deployment)
    for key, route in routes.items():
        spec = expected[key]
        ctx = Ctx(tf, variables, each_key=key, each_value=route)
        assert render(topic_res["name"], ctx) == spec.topic_id == config.topic(key)
        assert render(sub_res["name"], ctx) == spec.subscription_id
        assert sub_res["topic"] == "${google_pubsub_topic.topic[each.key].id}"
        assert route["path"] == spec.push_path
        assert render(sub_res["ack_deadline_seconds"], ctx) == spec.ack_deadline_seconds
        retry = one(sub_res["retry_policy"], "retry_policy")
        assert float(render(retry["minimum_backoff"], ctx).rstrip("s")) == spec.minimum_backoff_seconds
        assert float(render(retry["maximum_backoff"], ctx).rstrip("s")) == spec.maximum_backoff_seconds
        assert route["dead_letter"] is (spec.dead_letter_topic_id is not None), key
    dlq = one([d["dead_letter_policy"] for d in sub_res["dynamic"] if "dead_letter_policy" in d], "dead_letter_policy")
    assert dlq["for_each"] == '${each.value.dead_letter ? [google_pubsub_topic.topic["dead-letter"].id] : []}'
    policy = one(dlq["content"], "dead_letter_policy content")
    assert policy["dead_letter_topic"] == "${dead_letter_policy.value}"
    assert render(topic_res["name"], Ctx(tf, variables, each_key="dead-letter")) == \
        expected["runs"].dead_letter_topic_id
    assert render(policy["max_delivery_attempts"], base) == expected["runs"].max_delivery_attempts


def test_push_endpoints_reach_the_handler_for_their_path():
    """Each subscription pushes to a service whose image serves that path: the Flask app the
    image's Dockerfile runs, built with the env Terraform gives it, routes it (400 on an empty
    envelope = handled and rejected), and a launcher refuses other stages' paths (404)."""
    tf = load()
    svcs = services()
    base = Ctx(tf, tf.defaults())
    routes = render(tf.locals["push_routes"], base)
    uris = tf.locals["service_uris"]
    build = cloudbuild_images()
    for topic, route in routes.items():
        key = route["service"]
        assert uri_service_key(uris[key]) == key, f"local.service_uris[{key!r}] points at {uris[key]}"
        svc = svcs[key]
        sub = tf.resource("google_pubsub_subscription", "push")
        endpoint = render(one(sub["push_config"], "push_config")["push_endpoint"],
                          Ctx(tf, base.vars, each_key=topic, each_value=route))
        assert endpoint.endswith(route["path"]), endpoint
        assert uri_service_key(endpoint.removesuffix(route["path"])) == key, endpoint
        image = image_name(svc)
        dockerfile = ROOT / build[image]
        cmd = dockerfile.read_text()
        plain, _ = svc.env()
        config = configmod.from_env({k: str(v) for k, v in plain.items()}).with_overrides(push_auth="none")
        gunicorn = re.search(r"gunicorn .* ([\w.]+):app", cmd)
        if gunicorn:
            factory = flask_factory(gunicorn.group(1))
            client = factory(Deps(config)).test_client()
            resp = client.post(route["path"], json={})
            assert resp.status_code == 400 and b"message" in resp.data, \
                f"{key} ({image}) does not handle {route['path']}: {resp.status_code} {resp.data!r}"
            for other in all_stages():
                if key.startswith("launcher-") and other != config.stage:
                    assert client.post(f"/push/step/{other}", json={}).status_code == 404
        else:
            ff = re.search(r"functions-framework --source (\S+) --target (\w+)\s*\\?\s*--signature-type (\w+)", cmd)
            assert ff, f"{dockerfile} runs neither gunicorn nor functions-framework"
            source, target, signature = ff.groups()
            assert signature == "cloudevent", f"{key}: a push subscription needs a CloudEvent function"
            assert calls_in(ROOT / source, target) >= {"process_job_event"}, \
                f"{source}:{target} does not hand the push to process_job_event"
            assert route["path"] == "/push/job-events"


def test_functions_framework_turns_the_push_into_data_decode_push_reads(tmp_path):
    """The job-events container is a CloudEvent function behind a raw Pub/Sub push (not Eventarc):
    the real functions-framework must hand it an envelope lbtrain's decode_push understands."""
    import functions_framework

    out = tmp_path / "seen.json"
    source = tmp_path / "main.py"
    source.write_text(
        "import json, functions_framework\n"
        "from lbtrain.messages import decode_push\n"
        "@functions_framework.cloud_event\n"
        "def on_job_event(event):\n"
        "    msg = decode_push(event.data)\n"
        f"    open({str(out)!r}, 'w').write(json.dumps([msg.data, msg.attributes, msg.message_id]))\n"
    )
    app = functions_framework.create_app(target="on_job_event", source=str(source), signature_type="cloudevent")
    entry = json.loads((ROOT / "tests/data/logsink/ml_job_succeeded.json").read_text())
    resp = app.test_client().post("/push/job-events", json=encode_push(entry, {"k": "v"}, message_id="42"))
    assert resp.status_code == 200, resp.data
    data, attributes, message_id = json.loads(out.read_text())
    assert (data, attributes, message_id) == (entry, {"k": "v"}, "42")
    assert parse_job_event(data).job_id == entry["resource"]["labels"]["job_id"]


def test_every_service_env_var_is_read_by_config_from_env():
    every = Config(**{f.name: f"x-{f.name}" for f in fields(Config)
                      if f.type == "str" and f.name not in ("job_backend", "labelbox_backend", "push_auth",
                                                            "stage_backends", "serving_backends",
                                                            "model_options", "labelbox_api_key_secret",
                                                            "max_active_runs_per_type")},
                   labelbox_api_key_secret="projects/x/secrets/x-labelbox-api-key/versions/latest")
    accepted = set(configmod.to_env(every))
    assert configmod.from_env(configmod.to_env(every)) == every  # to_env is from_env's inverse
    for deployment in ("prod", "team-b"):
        for key, svc in services(deployment, deploy_dashboard=True).items():
            plain, secret = svc.env()
            unknown = (set(plain) | set(secret)) - accepted
            assert not unknown, f"{svc.name} sets env vars lbtrain.config never reads: {sorted(unknown)}"
            config = configmod.from_env({k: str(v) for k, v in plain.items()})
            assert config.deployment_name == deployment and config.project == SAMPLE["project"]
            assert config.region == SAMPLE["region"] and config.job_backend == "vertex"
            assert config.artifact_root.startswith("gs://"), config.artifact_root
            if key != "dashboard":  # every service that takes pushes or Scheduler calls checks who sends them
                assert config.push_auth == ("oidc" if key == "ingress" else "cloudrun-iam"), key
                assert config.push_audience in render(svc.body["custom_audiences"], svc.ctx)
                assert plain["PUSH_SERVICE_ACCOUNT"] == "${google_service_account.invoker.email}"
            if key.startswith("launcher-"):
                assert config.stage == svc.key
                assert config.job_image and config.job_image_gpu and config.serving_image
                assert plain["JOB_SERVICE_ACCOUNT"] == "${google_service_account.jobs.email}"


def test_secrets_come_from_secret_manager_never_as_values():
    tf = load()
    secret_names = {f.name.upper() for f in fields(Config) if not f.repr}
    assert secret_names == {"LABELBOX_API_KEY", "LABELBOX_WEBHOOK_SECRET", "API_TOKEN"}
    assert set(tf.locals["secrets"]) == secret_names
    svcs = services(deploy_dashboard=True)
    for svc in svcs.values():
        plain, secret = svc.env()
        assert not secret_names & set(plain), f"{svc.name} sets a secret as a plain value"
        for name, ref in secret.items():
            assert ref["secret"] == "${google_secret_manager_secret.secret[env.value].secret_id}", ref
            assert ref["each"] == name and ref["version"] == "latest"
    mounted = {k: set(svc.env()[1]) for k, svc in svcs.items()}
    assert {"LABELBOX_WEBHOOK_SECRET", "API_TOKEN"} <= mounted["ingress"]  # signature check, REST API
    assert "secret_data" not in "".join(tf.texts.values())
    assert not tf.of_type("google_secret_manager_secret_version"), "secret values must not be in Terraform"
    for name in tf.variables:
        if re.search(r"secret|token|api_key|password", name):
            assert name.endswith("_secret_id"), f"variable {name} looks like a secret value, not a secret id"
    # Each service's accessor grants are its mounts (test_each_service_account_holds_exactly_its_grants).
    secret_res = tf.resource("google_secret_manager_secret", "secret")
    assert secret_res["for_each"] == "${local.secrets}" and secret_res["secret_id"] == "${each.value}"
    assert one(secret_res["replication"], "replication")


def test_jobs_read_exactly_the_labelbox_key_secret_the_launcher_names():
    """Vertex jobs get no secret mounts: the launcher's LABELBOX_API_KEY_SECRET (read by config.from_env)
    names the Labelbox API key's secret, VertexBackend hands that name (never a value) to the job, and
    the jobs service account may read that one secret and no other."""
    from lbtrain.adapters.backend import JobSpec
    from lbtrain.adapters.vertex_backend import VertexBackend

    tf = load()
    base = Ctx(tf, tf.defaults())
    secret_ids = render(tf.locals["secrets"], base)
    expected = f"projects/{SAMPLE['project']}/secrets/{secret_ids['LABELBOX_API_KEY']}/versions/latest"
    secret_res = tf.resource("google_secret_manager_secret", "secret")
    assert secret_res["project"] == "${var.project}" and secret_res["secret_id"] == "${each.value}"
    launchers = {k: svc for k, svc in services().items() if k.startswith("launcher-")}
    assert launchers
    for svc in launchers.values():
        plain, _ = svc.env()
        config = configmod.from_env({k: str(v) for k, v in plain.items()})
        assert config.labelbox_api_key_secret == expected
        value = "lb-VALUE-never-in-a-job-0123"
        spec = VertexBackend(config.with_overrides(labelbox_api_key=value)).job_spec(JobSpec(
            name="prod-r1-etl-a1", run_id="r1", stage="etl", attempt=1, model_type="text_single_classification",
            inputs_uri="gs://b/i.json", outputs_uri="gs://b/o"))
        job_env = {e["name"]: e["value"] for e in spec["container_spec"]["env"]}
        assert value not in json.dumps(spec)
        assert configmod.from_env(job_env).labelbox_api_key_secret == expected  # what the job reads
    jobs_member = "${google_service_account.jobs.member}"
    grant = tf.resource("google_secret_manager_secret_iam_member", "jobs_labelbox_key")
    assert "for_each" not in grant and grant["member"] == jobs_member
    assert grant["secret_id"] == '${google_secret_manager_secret.secret["LABELBOX_API_KEY"].secret_id}'
    assert grant["role"] == "roles/secretmanager.secretAccessor" and grant["project"] == "${var.project}"
    # No other grant gives the jobs account any Secret Manager role (on a secret or the project).
    others = [f"{t}.{n}" for (t, n), body in tf.resources.items()
              if (t, n) != ("google_secret_manager_secret_iam_member", "jobs_labelbox_key")
              and "google_service_account.jobs." in json.dumps(body) and "secretmanager" in json.dumps(body)]
    assert others == []
    assert not re.search(r"roles/secretmanager", tf.resource("google_project_iam_member", "jobs")["for_each"])


# Minimal Cloud Logging filter evaluation: `a.b.c="v"` comparisons joined with AND.
def log_filter_matches(expression: str, entry: dict[str, Any]) -> bool:
    terms = expression.split(" AND ")
    for term in terms:
        m = re.fullmatch(r'\s*([\w.]+)\s*=\s*"([^"]*)"\s*', term)
        assert m, f"the test's filter evaluator does not understand {term!r}"
        value: Any = entry
        for part in m.group(1).split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value != m.group(2):
            return False
    return True


def test_log_sink_sends_job_state_changes_that_parse_job_event_accepts():
    tf = load()
    base = Ctx(tf, tf.defaults())
    sink = tf.resource("google_logging_project_sink", "job_events")
    expression = render(sink["filter"], base)
    assert 'resource.type="ml_job"' in expression
    entries = {p.stem: json.loads(p.read_text()) for p in (ROOT / "tests/data/logsink").glob("*.json")}
    assert {"ml_job_succeeded", "ml_job_failed"} <= set(entries)
    matched = {name for name, entry in entries.items() if log_filter_matches(expression, entry)}
    assert {"ml_job_succeeded", "ml_job_failed"} <= matched, "the sink would miss job state changes"
    assert "ml_job_running" not in matched, "the sink would forward every line a job prints"
    for name in matched:
        event = parse_job_event(entries[name])
        assert event.job_id == entries[name]["resource"]["labels"]["job_id"]
    other = {**entries["ml_job_succeeded"], "resource": {"type": "cloud_run_revision", "labels": {"job_id": "1"}}}
    assert not log_filter_matches(expression, other)
    with pytest.raises(BadMessage):
        parse_job_event(other)
    assert sink["destination"] == 'pubsub.googleapis.com/${google_pubsub_topic.topic["job-events"].id}'
    assert sink["unique_writer_identity"] is True
    grant = tf.resource("google_pubsub_topic_iam_member", "log_sink_publisher")
    assert grant["member"] == "${google_logging_project_sink.job_events.writer_identity}"
    assert grant["topic"] == '${google_pubsub_topic.topic["job-events"].name}'
    assert grant["role"] == "roles/pubsub.publisher"


def test_cloud_run_log_sink_sends_execution_ends_that_parse_job_event_accepts():
    tf = load()
    base = Ctx(tf, tf.defaults())
    sink = tf.resource("google_logging_project_sink", "cloud_run_job_events")
    expression = render(sink["filter"], base)
    entries = {p.stem: json.loads(p.read_text()) for p in (ROOT / "tests/data/logsink").glob("*.json")}
    for name in ("cloud_run_job_succeeded", "cloud_run_job_failed"):
        entry = json.loads(json.dumps(entries[name]).replace("proj-1", SAMPLE["project"]))
        assert log_filter_matches(expression, entry), name
        assert parse_job_event(entry).job_id.startswith("crj.")
    assert not log_filter_matches(expression, entries["ml_job_succeeded"])
    assert sink["destination"] == 'pubsub.googleapis.com/${google_pubsub_topic.topic["job-events"].id}'
    grant = tf.resource("google_pubsub_topic_iam_member", "cloud_run_log_sink_publisher")
    assert grant["member"] == "${google_logging_project_sink.cloud_run_job_events.writer_identity}"


def store_queries() -> set[tuple[str, frozenset[str], tuple[str, str]]]:
    """Composite indexes FirestoreStore's queries need, read from its source: per method, every
    combination of its (conditional) equality filters with its order_by on another field."""
    source = Path(firestore_store.__file__).read_text()
    tree = ast.parse(source)
    constants = {t.id: v.value for node in tree.body if isinstance(node, ast.Assign)
                 for t, v in zip(node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets,
                                 node.value.elts if isinstance(node.value, ast.Tuple) else [node.value], strict=False)
                 if isinstance(t, ast.Name) and isinstance(v, ast.Constant)}
    store = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FirestoreStore")
    needed = set()
    for method in (n for n in store.body if isinstance(n, ast.FunctionDef)):
        collections, mandatory, optional, orders = set(), set(), set(), []
        conditional = {id(c) for node in ast.walk(method) if isinstance(node, ast.If) for c in ast.walk(node)}
        for node in ast.walk(method):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute | ast.Name):
                continue
            fname = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            args = node.args
            if fname == "collection" and args and isinstance(node.func.value, ast.Attribute) \
                    and node.func.value.attr == "db":
                arg = args[0]
                collections.add(constants[arg.id] if isinstance(arg, ast.Name) else arg.value)
            elif fname == "FieldFilter":
                path, op = args[0].value, args[1].value
                assert op in ("==", "in"), f"{method.name}: range filter {op} needs a hand-written index check"
                (optional if id(node) in conditional else mandatory).add(path)
            elif fname == "order_by":
                direction = next((kw.value.attr for kw in node.keywords if kw.arg == "direction"), "ASCENDING")
                orders.append((args[0].value, direction))
        if not orders:
            continue  # equality filters alone are served by single-field indexes
        assert len(collections) == 1 and len(orders) == 1, f"{method.name}: extend this reader"
        for n in range(len(optional) + 1):
            for subset in itertools.combinations(sorted(optional), n):
                eq = frozenset(mandatory | set(subset))
                if eq:
                    needed.add((next(iter(collections)), eq, orders[0]))
    return needed


def test_composite_indexes_cover_the_store_queries():
    tf = load()
    needed = store_queries()
    assert needed, "FirestoreStore has no ordered queries? the reader of its source broke"
    index = tf.resource("google_firestore_index", "runs_list")
    assert index["for_each"] == "${local.runs_list_indexes}"
    dynamic = one([d["fields"] for d in index["dynamic"] if "fields" in d], "dynamic fields")
    assert dynamic["for_each"] == "${each.value}"
    assert one(dynamic["content"], "fields content") == {"field_path": "${fields.value}", "order": "ASCENDING"}
    order_fields = [(f["field_path"], f["order"]) for f in index["fields"]]
    assert order_fields[-1] == ("__name__", order_fields[0][1])  # cursor pagination (start_after)
    declared = {(index["collection"], frozenset(eq), order_fields[0])
                for eq in tf.locals["runs_list_indexes"].values()}
    assert needed - declared == set(), f"queries without a composite index: {needed - declared}"
    assert declared - needed == set(), f"indexes no query uses (they cost writes): {declared - needed}"
    ttl = tf.resource("google_firestore_field", "deliveries_ttl")
    assert ttl["collection"] == firestore_store.DELIVERIES and ttl["ttl_config"] == [{}]
    assert f'"{ttl["field"]}"' in Path(firestore_store.__file__).read_text()


def cloudbuild() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def cloudbuild_images() -> dict[str, str]:
    """Image name → Dockerfile, for images cloudbuild.yaml builds, pushes and lists."""
    doc = cloudbuild()
    built, pushed = {}, set()
    for step in doc["steps"]:
        args = step.get("args", [])
        if args[:1] == ["build"]:
            tag = args[args.index("-t") + 1]
            built[tag] = args[args.index("-f") + 1]
        elif args[:1] == ["push"]:
            pushed.add(args[1])
    out = {}
    for tag in doc["images"]:
        assert tag in built and tag in pushed, f"cloudbuild.yaml lists {tag} but does not build and push it"
        m = re.fullmatch(r"\$\{_REPO\}/([\w-]+):\$\{COMMIT_SHA\}", tag)
        assert m, tag
        out[m.group(1)] = built[tag]
    return out


def image_name(svc: Service) -> str:
    m = re.fullmatch(r"\$\{local\.images\.(\w+)\}", svc.container["image"])
    assert m, f"{svc.name}: image must be one of local.images, not {svc.container['image']}"
    image = render(svc.container["image"], svc.ctx)
    return image.rsplit("/", 1)[1].split(":")[0]


def test_every_image_is_built_by_cloudbuild_under_the_same_names():
    tf = load()
    doc = cloudbuild()
    subs = doc["substitutions"]
    variables = tf.defaults(region=subs["_REGION"])
    base = Ctx(tf, variables)
    built = cloudbuild_images()

    def cb(value: str) -> str:
        for key, val in {**subs, "_REPO": subs["_REPO"], "PROJECT_ID": SAMPLE["project"],
                         "COMMIT_SHA": SAMPLE["image_tag"]}.items():
            value = value.replace("${" + key + "}", val)
        return value.replace("${_REGION}", subs["_REGION"]).replace("${PROJECT_ID}", SAMPLE["project"])

    registry = cb(subs["_REPO"])
    assert render(tf.locals["registry"], base) == registry
    images = render(tf.locals["images"], base)
    dashboard_gate = tf.resource("google_cloud_run_v2_service", "dashboard")["count"]
    for key, ref in images.items():
        name = ref.removeprefix(registry + "/").split(":")[0]
        assert ref == f"{registry}/{name}:{SAMPLE['image_tag']}"
        if name not in built:
            assert key == "dashboard", f"Terraform runs image {name}, which cloudbuild.yaml does not build"
            assert dashboard_gate == "${var.deploy_dashboard ? 1 : 0}" and \
                tf.variables["deploy_dashboard"]["default"] is False
        else:
            assert (ROOT / built[name]).is_file(), built[name]
    for svc in services(deploy_dashboard=True).values():
        assert image_name(svc) in {ref.removeprefix(registry + "/").split(":")[0] for ref in images.values()}
    launcher_env = render(tf.locals["launcher_env"], base)
    assert {launcher_env["JOB_IMAGE"], launcher_env["JOB_IMAGE_GPU"], launcher_env["SERVING_IMAGE"]} <= \
        {f"{registry}/{n}:{SAMPLE['image_tag']}" for n in built}
    # The README builds images with cloudbuild.yaml minus its deploy steps: that still builds them all.
    kept = [s for s in doc["steps"] if not s["id"].startswith("deploy-")]
    assert {s["args"][1] for s in kept if s.get("args", [None])[0] == "push"} == set(doc["images"])
    # Defaults agree with cloudbuild.yaml's, so both address the same resources.
    assert variables["deployment_name"] == subs["_DEPLOYMENT"]
    assert f"gs://{render(tf.locals['bucket'], base)}" == cb(subs["_ARTIFACT_ROOT"])
    deploy_text = json.dumps([s for s in doc["steps"] if s["id"].startswith("deploy-")])
    names = {svc.name for svc in services("prod").values()}
    for pattern in re.findall(r"\$\{_DEPLOYMENT\}-[\w$-]+", deploy_text):
        if "$stage" in pattern:
            assert all(pattern.replace("${_DEPLOYMENT}", "prod").replace("$stage", s) in names
                       for s in all_stages())
        else:
            assert pattern.replace("${_DEPLOYMENT}", "prod") in names, pattern


def test_private_services_are_called_only_by_the_invoker_with_their_audience():
    tf = load()
    svcs = services()
    base = Ctx(tf, tf.defaults())
    routes = render(tf.locals["push_routes"], base)
    sub = tf.resource("google_pubsub_subscription", "push")
    oidc = one(one(sub["push_config"], "push_config")["oidc_token"], "oidc_token")
    assert oidc["service_account_email"] == "${google_service_account.invoker.email}"
    for topic, route in routes.items():
        audience = render(oidc["audience"], Ctx(tf, base.vars, each_key=topic, each_value=route))
        assert audience in render(svcs[route["service"]].body["custom_audiences"], svcs[route["service"]].ctx)
    for key, svc in svcs.items():
        # The ingress (Labelbox calls it) and the dashboard (people's browsers; IAM decides who) are
        # reachable from the internet; everything else only from Google's own callers.
        reachable = key in ("ingress", "dashboard")
        assert svc.body["ingress"] == ("INGRESS_TRAFFIC_ALL" if reachable else "INGRESS_TRAFFIC_INTERNAL_ONLY"), key
        # Each runs as its own account (test_each_cloud_run_service_runs_as_its_own_account), never the invoker.
        assert one(svc.body["template"], "template")["service_account"] == \
            f"${{google_service_account.{svc.resource}.email}}"
    members = tf.of_type("google_cloud_run_v2_service_iam_member")
    assert members["ingress_public"]["member"] == "allUsers"
    assert [k for k, m in members.items() if m["member"] == "allUsers"] == ["ingress_public"]  # dashboard: IAM
    granted = {m["name"]: m for m in members.values() if m["member"] == "${google_service_account.invoker.member}"}
    assert set(granted) == {"${each.value.name}", "${google_cloud_run_v2_service.job_events.name}",
                            "${google_cloud_run_v2_service.reconciler.name}"}
    assert members["launcher_invoker"]["for_each"] == "${google_cloud_run_v2_service.launcher}"
    assert all(m["role"] == "roles/run.invoker" for m in members.values())
    job = tf.resource("google_cloud_scheduler_job", "reconcile")
    target = one(job["http_target"], "http_target")
    assert uri_service_key(target["uri"]) == "reconciler"
    token = one(target["oidc_token"], "oidc_token")
    assert token["service_account_email"] == "${google_service_account.invoker.email}"
    assert render(token["audience"], base) in render(svcs["reconciler"].body["custom_audiences"], base)
    functions = ROOT / "functions/reconciler/Dockerfile"
    assert "--signature-type http" in functions.read_text()


def test_push_auth_matches_how_each_service_is_reached():
    """Cloud Run IAM verifies the token of a private service and forwards it without its signature
    (PUSH_AUTH=cloudrun-iam: re-verifying would refuse every push); on a service allUsers may
    invoke nothing did, so the app verifies it (oidc). Each expects the identity and audience its
    callers (push subscriptions, the Scheduler job) sign with."""
    tf = load()
    svcs = services(deploy_dashboard=True)
    base = Ctx(tf, tf.defaults())
    members = tf.of_type("google_cloud_run_v2_service_iam_member").values()

    def granted(member: str) -> set[str]:
        """Cloud Run service resources on which `member` has run.invoker."""
        out = set()
        for m in members:
            if m["member"] == member:
                ref = m["for_each"] if m["name"] == "${each.value.name}" else m["name"]
                found = re.fullmatch(r"\$\{google_cloud_run_v2_service\.(\w+)(?:\[0\])?(?:\.name)?\}", ref)
                assert found, ref
                out.add(found.group(1))
        return out

    public, invoker = granted("allUsers"), granted("${google_service_account.invoker.member}")
    callers: dict[str, list[dict[str, Any]]] = {}
    sub = tf.resource("google_pubsub_subscription", "push")
    token = one(one(sub["push_config"], "push_config")["oidc_token"], "oidc_token")
    for topic, route in render(tf.locals["push_routes"], base).items():
        ctx = Ctx(tf, base.vars, each_key=topic, each_value=route)
        callers.setdefault(route["service"], []).append(render(token, ctx))
    job = tf.resource("google_cloud_scheduler_job", "reconcile")
    target = one(job["http_target"], "http_target")
    callers.setdefault(uri_service_key(target["uri"]), []).append(render(one(target["oidc_token"], "oidc_token"), base))
    assert set(callers) == set(svcs) - {"dashboard"}
    for key, svc in svcs.items():
        plain, _ = svc.env()
        config = configmod.from_env({k: str(v) for k, v in plain.items()})
        if key not in callers:
            assert config.push_auth == "none", f"{key} takes no pushes"
            continue
        if svc.resource in public:
            assert config.push_auth == "oidc", f"{key}: anyone may invoke it, so the app must verify signatures"
        else:
            assert config.push_auth == "cloudrun-iam", f"{key}: Cloud Run IAM strips the signature it checked"
            assert svc.resource in invoker, f"{key} trusts Cloud Run IAM but the invoker may not call it"
        for caller in callers[key]:
            assert caller["service_account_email"] == config.push_service_account, key
            assert caller["audience"] == config.push_audience, key


def test_jobs_identity_can_do_what_jobs_do_and_launchers_can_use_it():
    tf = load()
    jobs_roles = set(re.findall(r'"(roles/[\w.]+)"', tf.resource("google_project_iam_member", "jobs")["for_each"]))
    assert "roles/aiplatform.user" in jobs_roles
    bucket = tf.resource("google_storage_bucket_iam_member", "jobs_artifacts")
    assert bucket["role"] == "roles/storage.objectAdmin" and bucket["member"] == "${google_service_account.jobs.member}"
    assert bucket["bucket"] == "${google_storage_bucket.artifacts.name}"
    acts_as = tf.resource("google_service_account_iam_member", "launcher_acts_as_jobs")
    assert acts_as["service_account_id"] == "${google_service_account.jobs.name}"
    assert acts_as["member"] == "${google_service_account.launcher.member}"
    # Jobs publish job events (the services' step publishing: test_each_service_account_holds_exactly_its_grants).
    events = tf.resource("google_pubsub_topic_iam_member", "jobs_publish_events")
    assert events["topic"] == '${google_pubsub_topic.topic["job-events"].name}'
    bucket_res = tf.resource("google_storage_bucket", "artifacts")
    assert bucket_res["uniform_bucket_level_access"] is True
    prefixes = [one(r["condition"], "condition").get("matches_prefix") for r in bucket_res.get("lifecycle_rule", [])]
    assert ["runs/"] in prefixes


def flask_factory(module: str):  # noqa: ANN201
    """The app factory a service module calls (`app = ingress_app(bootstrap())`), read from its source."""
    path = ROOT / (module.replace(".", "/") + ".py")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "app" for t in node.targets):
            call = node.value
            assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name), f"{path}: app = <factory>(...)"
            return getattr(apps, call.func.id)
    raise AssertionError(f"{path} defines no app")


def calls_in(path: Path, function: str) -> set[str]:
    tree = ast.parse(path.read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    return {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def test_terraform_fmt():
    if not TERRAFORM.exists():
        pytest.skip(f"{TERRAFORM} is not installed (CI may not have it); formatting unchecked")
    result = subprocess.run([str(TERRAFORM), "fmt", "-check", "-recursive", "-diff", str(TF_DIR)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"



def test_firebase_index_file_declares_what_terraform_does():
    """infra/firestore.indexes.json (Firebase CLI / emulator format) and Terraform must not drift apart."""
    tf = load()
    spec = json.loads((ROOT / "infra" / "firestore.indexes.json").read_text())
    from_json = set()
    for idx in spec["indexes"]:
        fields = [(f["fieldPath"], f["order"]) for f in idx["fields"]]
        assert fields[-1] == ("created_at", "DESCENDING"), idx
        assert all(order == "ASCENDING" for _, order in fields[:-1]), idx
        from_json.add((idx["collectionGroup"], frozenset(name for name, _ in fields[:-1])))
    index = tf.resource("google_firestore_index", "runs_list")
    from_tf = {(index["collection"], frozenset(eq)) for eq in tf.locals["runs_list_indexes"].values()}
    assert from_json == from_tf
    overrides = {(o["collectionGroup"], o["fieldPath"]) for o in spec.get("fieldOverrides", []) if o["indexes"] == []}
    unindexed = tf.resource("google_firestore_field", "runs_unindexed")
    assert overrides == {(unindexed["collection"], f) for f in ("labelbox_statuses", "params", "metrics")}
    assert "${toset(" in unindexed["for_each"] and all(f in unindexed["for_each"] for _, f in overrides)


def test_media_buckets_are_readable_by_the_jobs_only():
    """gs:// data rows in the customer's buckets: the jobs (etl, evaluate) read them; nothing may write."""
    tf = load()
    assert tf.variables["media_buckets"]["default"] == []
    media = tf.resource("google_storage_bucket_iam_member", "jobs_media")
    assert media["for_each"] == "${toset(var.media_buckets)}" and media["bucket"] == "${each.value}"
    assert media["role"] == "roles/storage.objectViewer"
    assert media["member"] == "${google_service_account.jobs.member}"
    others = [n for n, r in tf.of_type("google_storage_bucket_iam_member").items()
              if "var.media_buckets" in str(r.get("for_each", "")) and n != "jobs_media"]
    assert others == []


def test_launchers_pass_media_buckets_to_the_fetch_policy():
    """var.media_buckets reaches the launchers as MEDIA_BUCKETS, the jobs' only readable foreign buckets."""
    from lbtrain import fetch
    from lbtrain.adapters.vertex_backend import JOB_ENV_KEYS

    assert "MEDIA_BUCKETS" in JOB_ENV_KEYS
    for key, svc in services("prod", media_buckets=["rows-a", "rows.b"]).items():
        plain, _ = svc.env()
        if not key.startswith("launcher-"):
            assert "MEDIA_BUCKETS" not in plain, key
            continue
        assert plain["MEDIA_BUCKETS"] == "rows-a,rows.b"
        config = configmod.from_env({k: str(v) for k, v in plain.items()})
        policy = fetch.policy_from_config(config)
        assert policy.gcs_buckets == {"rows-a", "rows.b", fetch.bucket_of(config.artifact_root)}
        assert not policy.allow_files and not policy.allow_loopback  # LABELBOX_BACKEND=sdk in the cloud
    assert all("MEDIA_BUCKETS" not in svc.env()[0] for svc in services("prod").values())  # none: unset


def _plan_dashboard_invokers(tmp_path: Path, members: list[str]) -> subprocess.CompletedProcess[str]:
    """`terraform plan` of a module holding only the real dashboard_invokers variable block (offline)."""
    text = (TF_DIR / "variables.tf").read_text(encoding="utf-8")
    block = re.search(r'^variable "dashboard_invokers" \{.*?^\}\n', text, re.S | re.M)
    assert block, "variables.tf declares no dashboard_invokers"
    (tmp_path / "main.tf").write_text(block.group(0), encoding="utf-8")
    env = {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"}
    subprocess.run([str(TERRAFORM), "init", "-backend=false", "-input=false", "-no-color"], cwd=tmp_path,
                   env=env, capture_output=True, text=True, timeout=120, check=True)
    return subprocess.run([str(TERRAFORM), "plan", "-input=false", "-lock=false", "-no-color",
                           "-var", f"dashboard_invokers={json.dumps(members)}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("member", ["allUsers", "allAuthenticatedUsers", " ALLUSERS "])
def test_dashboard_invokers_refuse_the_public(tmp_path, member):
    if not TERRAFORM.exists():
        pytest.skip(f"{TERRAFORM} is not installed; the validation is unchecked")
    result = _plan_dashboard_invokers(tmp_path, ["user:alice@example.com", member])
    assert result.returncode != 0
    assert "allUsers and allAuthenticatedUsers would open the" in result.stdout + result.stderr


def test_dashboard_invokers_accept_named_members(tmp_path):
    if not TERRAFORM.exists():
        pytest.skip(f"{TERRAFORM} is not installed; the validation is unchecked")
    members = ["user:alice@example.com", "group:ml@example.com", "domain:example.com"]
    result = _plan_dashboard_invokers(tmp_path, members)
    assert result.returncode == 0, result.stdout + result.stderr


# -- least privilege: one identity per piece -------------------------------------------------------

STEPS = tuple(f"step-{s}" for s in all_stages())

# Account → what it may do, each grant with the code path that needs it. Kinds: project roles, roles
# on the artifact bucket, topics it publishes to, secrets it reads, accounts it may act as.
EXPECTED_GRANTS: dict[str, dict[str, dict[str, str]]] = {
    "ingress": {
        "roles": {"roles/datastore.user": "intake.start_run, cancel_run/retry_run, process_dead_letter",
                  "roles/logging.logWriter": "structured logs"},
        "bucket": {"roles/storage.objectViewer": "GET /runs/<id>: progress.of_running_step"},
        "topics": {t: "intake.publish_step: start_run, retry/cancel, dead letter → triggers.release" for t in STEPS},
        "secrets": {"LABELBOX_WEBHOOK_SECRET": "signature.verify on /model_run, /webhooks/labelbox",
                    "API_TOKEN": "REST API (common auth)",
                    "LABELBOX_API_KEY": "reporting.report_status: refusals, retry, dead letters"},
        "acts_as": {},
    },
    "launcher": {
        "roles": {"roles/datastore.user": "launch.launch_step claims the step",
                  "roles/logging.logWriter": "structured logs",
                  "roles/aiplatform.user": "VertexBackend.submit/find_by_name/cancel",
                  "roles/run.developer": "CloudRunBackend: ensure_job, RunJob with overrides, find_by_name, cancel"},
        "bucket": {"roles/storage.objectUser": "launch_step writes runs/<id>/inputs/<stage>-a<n>.json"},
        "topics": {},
        "secrets": {"LABELBOX_API_KEY": "launch_step reports the stage's status"},
        "acts_as": {"jobs": "VertexBackend.submit: the CustomJob runs as JOB_SERVICE_ACCOUNT"},
    },
    "job_events": {
        "roles": {"roles/datastore.user": "completion.handle_job_event",
                  "roles/logging.logWriter": "structured logs",
                  "roles/aiplatform.viewer": "VertexBackend.get_status (the event is only a hint)",
                  "roles/run.viewer": "CloudRunBackend.get_status/job_step read the execution"},
        "bucket": {"roles/storage.objectViewer": "completion.read_outputs/read_error"},
        "topics": {t: "publish_step: the next stage; triggers.on_run_finished releases a held run" for t in STEPS},
        "secrets": {"LABELBOX_API_KEY": "completion._report_end, triggers.model_run_created"},
        "acts_as": {},
    },
    "reconciler": {
        "roles": {"roles/datastore.user": "reconcile_once, triggers.sweep",
                  "roles/logging.logWriter": "structured logs",
                  "roles/aiplatform.user": "reconcile_once: get_status, cancel re-sent",
                  "roles/run.developer": "reconcile_once: Cloud Run executions' get_status, cancel re-sent"},
        "bucket": {"roles/storage.objectViewer": "reconcile_once → handle_job_event reads outputs"},
        "topics": {t: "reconcile_once re-drives lost steps; triggers.sweep" for t in STEPS},
        "secrets": {"LABELBOX_API_KEY": "reconcile_once → handle_job_event reports the end"},
        "acts_as": {},
    },
    "dashboard": {
        "roles": {"roles/datastore.user": "views, and the cancel/retry actions write",
                  "roles/logging.logWriter": "structured logs"},
        "bucket": {"roles/storage.objectViewer": "dashboard champion.json, progress"},
        "topics": {t: "actions: ingress.cancel_run/retry_run → publish_step" for t in STEPS},
        "secrets": {"API_TOKEN": "actions check the API token",
                    "LABELBOX_API_KEY": "_labelbox_history; retry reports to Labelbox"},
        "acts_as": {},
    },
    "jobs": {
        "roles": {"roles/aiplatform.user": "deploy stage: upload models, deploy endpoints",
                  "roles/logging.logWriter": "job logs",
                  "roles/run.developer": "deploy stage on Cloud Run: service, revisions, traffic (cloudrun_deploy)"},
        "bucket": {"roles/storage.objectAdmin": "jobs read inputs, write outputs, models, predictions"},
        "topics": {"job-events": "jobs publish their end event"},
        "secrets": {"LABELBOX_API_KEY": "modelrun/etl/evaluate read it by name (lbtrain/secrets.py)"},
        "acts_as": {"jobs": "cloudrun_deploy: the serving revision runs as the jobs account"},
    },
    "invoker": {"roles": {}, "bucket": {}, "topics": {}, "secrets": {}, "acts_as": {}},
}

_FLATTEN = re.compile(r'\$\{\{for p in flatten\(\[for svc, (\w+) in local\.(\w+) : \[for (\w) in \1 : '
                      r'\{svc = svc, (\w+) = \3\}\]\]\) : "\$\{p\.svc\} \$\{p\.\4\}" => p\}\}')
_ACCOUNT_MEMBER = re.compile(r"\$\{google_service_account\.(\w+)\.member\}")


def account_grants() -> dict[str, dict[str, set[str]]]:
    """Every grant to one of lbtrain's service accounts, evaluated from the IAM resources."""
    tf = load()
    base = Ctx(tf, tf.defaults())
    members = {svc: _ACCOUNT_MEMBER.fullmatch(m).group(1) for svc, m in tf.locals["service_members"].items()}
    out = {name: {kind: set() for kind in ("roles", "bucket", "topics", "secrets", "acts_as")}
           for name in tf.of_type("google_service_account")}
    kinds = {"google_project_iam_member": ("roles", "role"),
             "google_storage_bucket_iam_member": ("bucket", "role"),
             "google_pubsub_topic_iam_member": ("topics", "topic"),
             "google_secret_manager_secret_iam_member": ("secrets", "secret_id"),
             "google_service_account_iam_member": ("acts_as", "service_account_id")}
    for (rtype, name), body in tf.resources.items():
        if rtype not in kinds:
            continue
        kind, attr = kinds[rtype]
        flat = _FLATTEN.fullmatch(str(body.get("for_each", "")))
        if flat:  # one grant per (service, item) of a local table
            assert body["member"] == "${local.service_members[each.value.svc]}", name
            field_name = flat.group(4)
            pairs = [(members[svc], item) for svc, items in tf.locals[flat.group(2)].items() for item in items]
            for account, item in pairs:
                value = {"roles": "${each.value.role}", "topics": "${google_pubsub_topic.topic[each.value.topic].name}",
                         "secrets": "${google_secret_manager_secret.secret[each.value.name].secret_id}"}[kind]
                assert body[attr] == value and f"each.value.{field_name}" in value, (name, body[attr])
                out[account][kind].add(item)
            continue
        if body.get("member") == "${local.service_members[each.key]}":  # a map service → one value
            assert body["for_each"] == "${local.service_bucket_roles}" and body[attr] == "${each.value}", name
            assert body["bucket"] == "${google_storage_bucket.artifacts.name}", name
            for svc, role in tf.locals["service_bucket_roles"].items():
                out[members[svc]][kind].add(role)
            continue
        m = _ACCOUNT_MEMBER.fullmatch(str(body.get("member", "")))
        if not m:  # allUsers, the Pub/Sub service agent, var.dashboard_invokers: not our accounts
            assert "google_service_account." not in str(body.get("member", "")), name
            continue
        account = m.group(1)
        if kind == "roles":
            items = re.findall(r'"(roles/[\w.]+)"', body["for_each"]) if "for_each" in body else [body["role"]]
        elif kind == "bucket":
            if body["bucket"] != "${google_storage_bucket.artifacts.name}":
                continue  # jobs_media: the customer's media buckets (test_media_buckets_are_readable_by_the_jobs_only)
            items = [body["role"]]
        elif kind == "topics":
            items = [re.fullmatch(r'\$\{google_pubsub_topic\.topic\["([\w-]+)"\]\.name\}', body["topic"]).group(1)]
            assert body["role"] == "roles/pubsub.publisher", name
        elif kind == "secrets":
            items = [re.fullmatch(r'\$\{google_secret_manager_secret\.secret\["(\w+)"\]\.secret_id\}',
                                  body["secret_id"]).group(1)]
            assert body["role"] == "roles/secretmanager.secretAccessor", name
        else:
            assert body["role"] == "roles/iam.serviceAccountUser", name
            items = [re.fullmatch(r"\$\{google_service_account\.(\w+)\.name\}", body["service_account_id"]).group(1)]
        out[account][kind].update(items)
    assert render(tf.locals["stages"], base) == list(all_stages())
    return out


def test_each_service_account_holds_exactly_its_grants():
    """Least privilege: each account's project roles, artifact bucket roles, topics, secrets and actAs
    grants are exactly the table above (each entry names the code that needs it)."""
    got = account_grants()
    assert set(got) == set(EXPECTED_GRANTS), "one account per piece, and no shared runtime account"
    for account, kinds in EXPECTED_GRANTS.items():
        for kind, expected in kinds.items():
            assert got[account][kind] == set(expected), (account, kind)


def test_each_cloud_run_service_runs_as_its_own_account():
    tf = load()
    svcs = services(deploy_dashboard=True)
    accounts = {}
    for key, svc in svcs.items():
        sa = one(svc.body["template"], "template")["service_account"]
        expected = "launcher" if svc.resource == "launcher" else svc.resource
        assert sa == f"${{google_service_account.{expected}.email}}", (key, sa)
        accounts.setdefault(sa, set()).add(svc.resource)
    assert all(len(resources) == 1 for resources in accounts.values())
    ids = [render(body["account_id"], Ctx(tf, tf.defaults())) for body in tf.of_type("google_service_account").values()]
    assert len(set(ids)) == len(ids) and all(6 <= len(i) <= 30 for i in ids), ids
    outputs = next(o["service_accounts"] for o in tf.blocks["output"] if "service_accounts" in o)["value"]
    assert set(outputs) == set(tf.of_type("google_service_account"))


def test_only_launchers_act_as_the_jobs_account_and_public_pieces_cannot_launch():
    got = account_grants()
    # The jobs account acts as itself only: the deploy job's Cloud Run serving revisions run as it.
    assert {a for a, kinds in got.items() if kinds["acts_as"]} == {"launcher", "jobs"}
    assert got["jobs"]["acts_as"] == {"jobs"}
    assert got["launcher"]["acts_as"] == {"jobs"}
    for account in ("ingress", "dashboard"):
        assert not [r for r in got[account]["roles"] if "aiplatform" in r or "roles/run." in r], account
    # Nobody may mint tokens for (impersonate) a service account but Pub/Sub for the invoker.
    tokens = [b for b in load().of_type("google_service_account_iam_member").values()
              if b["role"] == "roles/iam.serviceAccountTokenCreator"]
    assert [(b["service_account_id"], b["member"]) for b in tokens] == \
        [("${google_service_account.invoker.name}", "${local.pubsub_service_agent}")]


def test_each_service_reads_exactly_the_secrets_it_mounts():
    got = account_grants()
    for key, svc in services(deploy_dashboard=True).items():
        sa = re.fullmatch(r"\$\{google_service_account\.(\w+)\.email\}",
                          one(svc.body["template"], "template")["service_account"]).group(1)
        assert set(svc.env()[1]) == got[sa]["secrets"], key


def test_admission_limits_reach_every_service():
    """var.max_active_runs / max_active_runs_per_type / monthly_node_hours: whoever starts, retries or ends a
    run (ingress, job-events, reconciler, dashboard) reads the same limits; off by default."""
    for key, svc in services("prod", deploy_dashboard=True).items():
        config = configmod.from_env({k: str(v) for k, v in svc.env()[0].items()})
        assert (config.max_active_runs, config.max_active_runs_per_type, config.monthly_node_hours) == (0, "", 0.0), key
    limited = services("prod", deploy_dashboard=True, max_active_runs=4, max_active_runs_per_type='{"ner": 1}',
                       monthly_node_hours=500)
    for key, svc in limited.items():
        config = configmod.from_env({k: str(v) for k, v in svc.env()[0].items()})
        assert (config.max_active_runs, config.max_active_runs_per_type, config.monthly_node_hours) == (
            4, '{"ner": 1}', 500.0), key


def test_retry_settings_reach_every_service():
    """var.max_attempts / retry_base_seconds / retry_cap_seconds: job-events and the launchers decide a
    retry, the reconciler re-offers it; the defaults are the code's."""
    defaults = Config()
    for key, svc in services("prod", deploy_dashboard=True).items():
        config = configmod.from_env({k: str(v) for k, v in svc.env()[0].items()})
        assert (config.max_attempts, config.retry_base_seconds, config.retry_cap_seconds) == (
            defaults.max_attempts, defaults.retry_base_seconds, defaults.retry_cap_seconds), key
    tuned = services("prod", deploy_dashboard=True, max_attempts=5, retry_base_seconds=10, retry_cap_seconds=120)
    for key, svc in tuned.items():
        config = configmod.from_env({k: str(v) for k, v in svc.env()[0].items()})
        assert (config.max_attempts, config.retry_base_seconds, config.retry_cap_seconds) == (5, 10.0, 120.0), key
