"""The deployment Terraform describes, run on this machine: the production-shaped suite's stack.

Nothing here is written by hand that Terraform already says. Each Cloud Run service of
`infra/terraform` (parsed and evaluated by tests/unit/test_terraform.py's HCL model) is started from
its own image's environment (tests/image_env.py: the Dockerfile's installs, its COPYed files, its
command) with the environment Terraform renders for it: plain values, secrets resolved the way Cloud Run
mounts them, service-account emails from the account resources. The Pub/Sub topics and push
subscriptions are Terraform's (endpoints, audiences, retry and dead-letter policies), on the emulator.
In front of every service stands a fake of what Cloud Run adds (tests/fakes/cloud_run_front.py): private
services receive the push account's token as Cloud Run forwards it (signature stripped), the public
ingress receives Pub/Sub's pushes with a token signed by a local key whose certificates the test serves.

What cannot run here is faked at the wire, with the real clients talking to it: Vertex AI (its jobs run
as processes of the jobs image's environment, their ends reported as log-sink entries), Labelbox (the
SDK against its GraphQL fake), Secret Manager, GCS (the storage emulator). The only values added to
Terraform's environment are where those endpoints are (EMULATED), never behaviour.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbtrain.client import Client
from lbtrain.emulators import free_port
from tests import http, image_env
from tests.fakes.cloud_run_front import CloudRunFront
from tests.fakes.google_oidc import Issuer
from tests.fakes.labelbox_server import FakeLabelbox
from tests.fakes.labelbox_server import serve as serve_labelbox
from tests.fakes.secret_manager import FakeSecretManager
from tests.fakes.secret_manager import serve as serve_secrets
from tests.fakes.vertex import FakeVertex
from tests.fakes.vertex import serve as serve_vertex
from tests.fakes.vertex_runner import JobRunner
from tests.unit import test_terraform as tfmodel

# Values the operator adds to Secret Manager after `terraform apply` (distinctive, so a leak is found).
SECRET_VALUES = {
    "LABELBOX_API_KEY": "prod-labelbox-key-4f1d9a0c7e2b",
    "LABELBOX_WEBHOOK_SECRET": "prod-webhook-secret-8c3e5b7a1d90",
    "API_TOKEN": "prod-api-token-2b6f0e9d4a17",
}
# Where the emulated Google APIs and fakes listen: the only keys added to Terraform's environment.
EMULATED = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "VERTEX_API_ENDPOINT",
            "LABELBOX_ENDPOINT", "SECRET_MANAGER_API_ENDPOINT", "PUSH_CERTS_URL")
ACCOUNT = re.compile(r"\$\{google_service_account\.(\w+)\.email\}")


@dataclass
class RunningService:
    key: str
    env: dict[str, str]
    front: CloudRunFront
    proc: Any
    log: Path

    @property
    def url(self) -> str:
        return self.front.url


@dataclass
class Deployment:
    root: Path
    project: str
    deployment: str
    emulator_hosts: dict[str, str]
    gcs_host: str
    variables: dict[str, Any] = field(default_factory=dict)
    services: dict[str, RunningService] = field(default_factory=dict)
    vertex: FakeVertex = field(default_factory=FakeVertex)
    labelbox: FakeLabelbox = field(default_factory=lambda: FakeLabelbox(chunk_lines=500))
    secrets: FakeSecretManager = field(default_factory=FakeSecretManager)
    issuer: Issuer = field(default_factory=Issuer)
    runner: JobRunner | None = None
    _servers: list[Any] = field(default_factory=list)
    _envs: dict[str, image_env.ImageEnv] = field(default_factory=dict)

    # -- Terraform, rendered -----------------------------------------------------------------------
    @property
    def tf_vars(self) -> dict[str, Any]:
        return {"project": self.project, "deployment_name": self.deployment, **self.variables}

    def accounts(self) -> dict[str, str]:
        """Service-account resource name → its email, as Google forms it from the account id."""
        tf = tfmodel.load()
        ctx = tfmodel.Ctx(tf, tf.defaults(**self.tf_vars))
        return {name: f"{tfmodel.render(body['account_id'], ctx)}@{self.project}.iam.gserviceaccount.com"
                for name, body in tf.of_type("google_service_account").items()}

    def substitute(self, value: Any) -> str:
        """Resource attributes Terraform only knows at apply time, as they would be here."""
        accounts = self.accounts()
        text = ACCOUNT.sub(lambda m: accounts[m.group(1)], str(value))
        if "${" in text:
            raise AssertionError(f"the suite does not know what {text!r} is at apply time: teach it")
        return text

    def service_env(self, svc: tfmodel.Service) -> dict[str, str]:
        plain, secret = svc.env()
        env = {name: self.substitute(value) for name, value in plain.items()}
        for name in secret:
            env[name] = SECRET_VALUES[name]  # Cloud Run resolves secret_key_ref when the instance starts
        overlap = set(env) & set(EMULATED)
        assert not overlap, f"{svc.name}: Terraform sets {overlap}, which the suite points at fakes"
        return env

    def secret_ids(self) -> dict[str, str]:
        tf = tfmodel.load()
        return tfmodel.render(tf.locals["secrets"], tfmodel.Ctx(tf, tf.defaults(**self.tf_vars)))

    def push_routes(self) -> list[dict[str, Any]]:
        """Terraform's push subscriptions: topic, subscription, target service, path, token, policies."""
        tf = tfmodel.load()
        variables = tf.defaults(**self.tf_vars)
        base = tfmodel.Ctx(tf, variables)
        topic_res = tf.resource("google_pubsub_topic", "topic")
        sub_res = tf.resource("google_pubsub_subscription", "push")
        out = []
        for key, route in tfmodel.render(tf.locals["push_routes"], base).items():
            ctx = tfmodel.Ctx(tf, variables, each_key=key, each_value=route)
            push = tfmodel.one(sub_res["push_config"], "push_config")
            oidc = tfmodel.one(push["oidc_token"], "oidc_token")
            endpoint = tfmodel.render(push["push_endpoint"], ctx)
            retry = tfmodel.one(sub_res["retry_policy"], "retry_policy")
            out.append({
                "key": key, "topic": tfmodel.render(topic_res["name"], ctx),
                "subscription": tfmodel.render(sub_res["name"], ctx),
                "service": tfmodel.uri_service_key(endpoint.removesuffix(route["path"])), "path": route["path"],
                "email": self.substitute(tfmodel.render(oidc["service_account_email"], ctx)),
                "audience": tfmodel.render(oidc["audience"], ctx),
                "ack_deadline": int(tfmodel.render(sub_res["ack_deadline_seconds"], ctx)),
                "min_backoff": float(tfmodel.render(retry["minimum_backoff"], ctx).rstrip("s")),
                "max_backoff": float(tfmodel.render(retry["maximum_backoff"], ctx).rstrip("s")),
                "dead_letter": bool(route["dead_letter"]),
                "max_delivery_attempts": int(variables["max_delivery_attempts"]),
            })
        return out

    def scheduler(self) -> dict[str, str]:
        tf = tfmodel.load()
        ctx = tfmodel.Ctx(tf, tf.defaults(**self.tf_vars))
        target = tfmodel.one(tf.resource("google_cloud_scheduler_job", "reconcile")["http_target"], "http_target")
        oidc = tfmodel.one(target["oidc_token"], "oidc_token")
        return {"service": tfmodel.uri_service_key(target["uri"]), "method": target["http_method"],
                "email": self.substitute(tfmodel.render(oidc["service_account_email"], ctx)),
                "audience": tfmodel.render(oidc["audience"], ctx)}

    def public_services(self) -> set[str]:
        """Services `allUsers` may invoke (everything else is behind Cloud Run IAM)."""
        tf = tfmodel.load()
        out = set()
        for body in tf.of_type("google_cloud_run_v2_service_iam_member").values():
            if body.get("member") == "allUsers":
                _, name, key, _ = tfmodel.resource_ref(body["name"].replace(".name}", ".uri}"))
                out.add(name.replace("_", "-") + (f"-{key}" if key else ""))
        return out

    # -- starting it -------------------------------------------------------------------------------
    def start(self) -> Deployment:
        self._start_fakes()
        svcs = tfmodel.services(self.deployment, project=self.project, **self.variables)
        routes = self.push_routes()
        sched = self.scheduler()
        callers = {r["service"]: r for r in routes}
        callers.setdefault(sched["service"], sched)
        public = self.public_services()
        for key, svc in svcs.items():
            env = {**self.service_env(svc), **self._emulated()}
            self.services[key] = self._start_service(key, svc, env, callers.get(key), key in public)
        self._start_topology(routes)
        self._start_runner()
        return self

    def _start_fakes(self) -> None:
        self._servers.append(serve_vertex(self.vertex))
        self._servers.append(serve_labelbox(self.labelbox))
        self._servers.append(serve_secrets(self.secrets))
        self.issuer.serve()
        for env_name, secret_id in self.secret_ids().items():
            self.secrets.add(f"projects/{self.project}/secrets/{secret_id}", SECRET_VALUES[env_name])
        from google.cloud import storage as gcs

        with _storage_host(self.gcs_host):
            client = gcs.Client(project=self.project)
            for bucket in (self.artifact_bucket, self.media_bucket):
                with contextlib.suppress(Exception):
                    client.create_bucket(bucket)

    @property
    def artifact_bucket(self) -> str:
        return f"{self.project}-lbtrain-artifacts"

    @property
    def media_bucket(self) -> str:
        return f"{self.project}-media"

    def _emulated(self) -> dict[str, str]:
        return {**self.emulator_hosts, "STORAGE_EMULATOR_HOST": self.gcs_host,
                "VERTEX_API_ENDPOINT": f"http://127.0.0.1:{self._servers[0].server_address[1]}",
                "LABELBOX_ENDPOINT": f"{self.labelbox.base_url}/graphql",
                "SECRET_MANAGER_API_ENDPOINT": self.secrets.base_url, "PUSH_CERTS_URL": self.issuer.certs_url}

    def image(self, svc: tfmodel.Service) -> image_env.ImageEnv:
        dockerfile = tfmodel.cloudbuild_images()[tfmodel.image_name(svc)]
        if dockerfile not in self._envs:
            self._envs[dockerfile] = image_env.build(dockerfile, self.root / "apps" / Path(dockerfile).parent.name
                                                     / Path(dockerfile).name.replace(".", "-"))
        return self._envs[dockerfile]

    def _start_service(self, key: str, svc: tfmodel.Service, env: dict[str, str], caller: dict[str, Any] | None,
                       public: bool) -> RunningService:
        image = self.image(svc)
        port = free_port()
        log = self.root / f"{key}.log"
        proc = image.popen(image.command(), env={**env, "PORT": str(port)}, log=log)
        http.wait_answering(f"http://127.0.0.1:{port}/healthz", proc, log)
        issuer = self.issuer

        def authorize(method: str, path: str) -> str | None:
            if caller is None:
                return None  # called by people (the dashboard), not by Pub/Sub or the scheduler
            claims = issuer.claims(caller["audience"], email=caller["email"])
            if public:
                return issuer.signed(claims) if path.startswith("/push/") else None
            return issuer.stripped(claims)  # Cloud Run IAM checked it and stripped the signature

        timeout = float(str(svc.render(tfmodel.one(svc.body["template"], "template").get("timeout", "300s")))
                        .rstrip("s"))
        front = CloudRunFront(f"http://127.0.0.1:{port}", authorize, timeout=timeout).start()
        return RunningService(key, env, front, proc, log)

    def _start_topology(self, routes: list[dict[str, Any]]) -> None:
        from google.cloud import pubsub_v1

        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        for route in routes:
            publisher.create_topic(name=publisher.topic_path(self.project, route["topic"]))
        dead_letter = next(r["topic"] for r in routes if r["key"] == "dead-letter")
        for route in routes:
            request: dict[str, Any] = {
                "name": subscriber.subscription_path(self.project, route["subscription"]),
                "topic": publisher.topic_path(self.project, route["topic"]),
                "push_config": {"push_endpoint": self.services[route["service"]].url + route["path"],
                                "oidc_token": {"service_account_email": route["email"],
                                               "audience": route["audience"]}},
                "ack_deadline_seconds": route["ack_deadline"],
                "retry_policy": {"minimum_backoff": {"seconds": int(route["min_backoff"]),
                                                     "nanos": int(route["min_backoff"] % 1 * 1e9)},
                                 "maximum_backoff": {"seconds": int(route["max_backoff"])}},
            }
            if route["dead_letter"]:
                request["dead_letter_policy"] = {"dead_letter_topic": publisher.topic_path(self.project, dead_letter),
                                                 "max_delivery_attempts": route["max_delivery_attempts"]}
            subscriber.create_subscription(request=request)

    def _start_runner(self) -> None:
        launcher = next(s for k, s in self.services.items() if k.startswith("launcher-"))
        jobs = self._jobs_image(launcher.env["JOB_IMAGE"])
        self.runner = JobRunner(project=self.project,
                                job_events_topic=f"projects/{self.project}/topics/{self.deployment}-job-events",
                                log_dir=self.root / "vertex-jobs", python=jobs.python,
                                env={"PYTHONPATH": str(jobs.app), "PUBSUB_EMULATOR_HOST":
                                     self.emulator_hosts["PUBSUB_EMULATOR_HOST"]},
                                cwd=jobs.app)
        self.runner.attach(self.vertex)

    def _jobs_image(self, image_uri: str) -> image_env.ImageEnv:
        """The environment of the image a launcher's JOB_IMAGE names (cloudbuild.yaml builds it)."""
        name = image_uri.rsplit("/", 1)[1].split(":")[0]
        dockerfile = tfmodel.cloudbuild_images()[name]
        if dockerfile not in self._envs:
            self._envs[dockerfile] = image_env.build(dockerfile, self.root / "apps" / name)
        return self._envs[dockerfile]

    # -- using it ----------------------------------------------------------------------------------
    def api(self) -> Client:
        return Client(self.services["ingress"].url, token=SECRET_VALUES["API_TOKEN"], retries=2)

    def webhook(self, path: str, body: dict[str, Any], delivery_id: str, event: str = "") -> tuple[int, Any]:
        return self.api().send_webhook(path, body, SECRET_VALUES["LABELBOX_WEBHOOK_SECRET"],
                                       delivery_id=delivery_id, event=event)

    def tick_scheduler(self) -> tuple[int, str]:
        """What Cloud Scheduler does every few minutes: call the reconciler."""
        sched = self.scheduler()
        req = urllib.request.Request(self.services[sched["service"]].url, data=b"", method=sched["method"])
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def pushes(self) -> list[tuple[str, Any]]:
        return [(key, f) for key, s in self.services.items() for f in s.front.pushes()]

    def logs(self) -> str:
        texts = [s.log.read_text(errors="replace") for s in self.services.values() if s.log.exists()]
        if self.runner is not None:
            texts += [p.read_text(errors="replace") for p in self.runner.log_dir.glob("*.log")]
        return "\n".join(texts)

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        for svc in self.services.values():
            svc.front.stop()
            with contextlib.suppress(Exception):
                svc.proc.terminate()
        for svc in self.services.values():
            try:
                svc.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001 - a stuck server must not hide the test's result
                svc.proc.kill()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self.issuer.close()


@contextlib.contextmanager
def _storage_host(host: str):  # noqa: ANN202
    import os

    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved


def json_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
