"""Each image's own environment, as its Dockerfile installs it (tests/image_env.py), running its piece's
smoke path against the emulators and fakes: a missing package fails here, not in a deployment.

- jobs image: etl → train → evaluate with ARTIFACT_ROOT=gs:// on the storage emulator (text and torch).
- serving image: `python -m jobs.serving` loads a model from a gs:// AIP_STORAGE_URI, answers health/predict.
- ingress, launcher, job-events, reconciler, dashboard images: each started with its image's command
  (gunicorn / functions-framework), chained by the real messages: a signed webhook starts a run, the step
  message launches a Vertex job (fake Vertex), its sink entry fails the run, the reconciler sweeps, the
  dashboard shows the run and the champion record read from gs://.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain import datasets, storage
from lbtrain.adapters import pubsub_bus
from lbtrain.client import Client
from lbtrain.emulators import free_port
from lbtrain.launch import inputs_uri, job_inputs
from tests import http, image_env
from tests.conftest import fresh_id
from tests.fakes.vertex import FakeVertex, serve
from tests.launcher_args import recorded_args

BUCKET = "lbtrain-images"
TOKEN = "image-env-api-token-0123456789"
SECRET = "image-env-webhook-secret-0123456789"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gcs() -> Iterator[str]:
    """An in-process GCS emulator for the module; its host for STORAGE_EMULATOR_HOST."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def gcs_client(gcs: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from google.cloud import storage as gcs_lib

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)
    monkeypatch.setattr(storage, "_gcs_client", None)
    return gcs_lib.Client().bucket(BUCKET)


def _env(dockerfile: str, tmp_path_factory: pytest.TempPathFactory) -> image_env.ImageEnv:
    return image_env.build(dockerfile, tmp_path_factory.mktemp(Path(dockerfile).parent.name + "-app"))


# -- jobs and serving ---------------------------------------------------------------------------------

class ImageJobs:
    """Jobs run as the launcher runs them, but as `python -m jobs.main` in the jobs image's environment."""

    def __init__(self, env: image_env.ImageEnv, root: str, labelbox: Path, gcs: str, tmp: Path):
        self.env, self.root, self.labelbox, self.gcs, self.tmp = env, root, labelbox, gcs, tmp
        self.outputs: dict[str, str] = {}

    def run(self, model_type: str, model_run: str, stage: str, params: dict[str, Any]) -> dict[str, Any]:
        run = {"run_id": "r1", "model_type": model_type, "model_run_id": model_run, "model_id": "m",
               "params": params, "outputs": self.outputs}
        in_uri = inputs_uri(self.root, "r1", stage, 1)
        storage.write_json(in_uri, job_inputs(run, stage, 1))
        out = storage.run_dir(self.root, "r1", stage, 1)
        result = self.env.run([*self.env.command(), "--run-id", "r1", "--stage", stage, "--attempt", "1",
                               "--inputs", in_uri, "--outputs", out, *recorded_args(stage, self.outputs)],
                              env={"ARTIFACT_ROOT": self.root, "STORAGE_EMULATOR_HOST": self.gcs,
                                   "LABELBOX_BACKEND": "file", "LABELBOX_DIR": str(self.labelbox),
                                   "LBTRAIN_MIN_EXAMPLES": "train=1,validation=0,test=0", "TMPDIR": str(self.tmp)})
        error = storage.join(out, "error.json")
        assert result.returncode == 0, (storage.read_text(error) if storage.exists(error) else "",
                                        result.stderr[-4000:])
        self.outputs[stage] = out
        return storage.read_json(storage.join(out, "outputs.json"))


@pytest.fixture(scope="module")
def jobs_env(tmp_path_factory: pytest.TempPathFactory) -> image_env.ImageEnv:
    return _env("jobs/Dockerfile", tmp_path_factory)


CASES = {"text_single_classification": (120, {"C": [1.0]}),
         "image_single_classification": (100, {"epochs": 1, "threads": 1})}


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_jobs_image_runs_the_stages_on_gcs(jobs_env: image_env.ImageEnv, gcs: str, gcs_client: Any,
                                           tmp_path: Path, model_type: str) -> None:
    limit, params = CASES[model_type]
    root = f"gs://{BUCKET}/{fresh_id('jobs')}"
    labelbox, mr = tmp_path / "labelbox", fresh_id("mr")
    datasets.build(model_type, str(labelbox), mr, limit=limit)
    jobs = ImageJobs(jobs_env, root, labelbox, gcs, tmp_path)
    etl = jobs.run(model_type, mr, "etl", params)
    assert etl["metrics"]["examples"] > 0
    train = jobs.run(model_type, mr, "train", params)
    assert train["uris"]["model"].startswith(root + "/")
    evaluate = jobs.run(model_type, mr, "evaluate", params)
    assert evaluate["uris"]["predictions"].startswith(root + "/")
    assert storage.exists(storage.join(train["uris"]["model"], "model.json"))
    # The predictions reached the (file-backed) Labelbox model run.
    assert (labelbox / "model_runs" / mr).is_dir()


def test_jobs_image_has_what_the_cloud_stages_import(jobs_env: image_env.ImageEnv) -> None:
    """The deploy stage and AutoML (aiplatform), the SDK Labelbox, Secret Manager: imported as the jobs do."""
    code = ("import jobs.deploy, jobs.vertex_deploy, jobs.cloudrun_deploy, jobs.automl, jobs.etl, jobs.train\n"
            "import jobs.evaluate, lbtrain.adapters.labelbox_sdk, lbtrain.adapters.vertex_backend\n"
            "from google.cloud import aiplatform, storage, secretmanager, run_v2\n"
            "import labelbox, torch, sklearn, sklearn_crfsuite\n"
            "print(torch.__version__)")
    result = jobs_env.run([jobs_env.python, "-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    pin = next(d for d in image_env.project_dependencies("jobs") if d.startswith("torch=="))
    assert result.stdout.strip().split("+")[0] == pin.split("==")[1]


@pytest.fixture(scope="module")
def serving_env(tmp_path_factory: pytest.TempPathFactory) -> image_env.ImageEnv:
    return _env("jobs/serving.Dockerfile", tmp_path_factory)


def test_serving_image_serves_a_model_from_gcs(jobs_env: image_env.ImageEnv, serving_env: image_env.ImageEnv,
                                               gcs: str, gcs_client: Any, tmp_path: Path) -> None:
    model_type = "text_single_classification"
    limit, params = CASES[model_type]
    root = f"gs://{BUCKET}/{fresh_id('serve')}"
    labelbox, mr = tmp_path / "labelbox", fresh_id("mr")
    datasets.build(model_type, str(labelbox), mr, limit=limit)
    jobs = ImageJobs(jobs_env, root, labelbox, gcs, tmp_path)
    jobs.run(model_type, mr, "etl", params)
    train = jobs.run(model_type, mr, "train", params)
    model_uri = train["uris"]["model"]
    classes = storage.read_json(storage.join(model_uri, "model.json"))["classes"]

    port = free_port()
    log = tmp_path / "serving.log"
    proc = serving_env.popen(serving_env.command(), log=log, env={
        "AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": "/predict", "AIP_HEALTH_ROUTE": "/health",
        "AIP_STORAGE_URI": model_uri, "STORAGE_EMULATOR_HOST": gcs, "LBTRAIN_SERVING_HOST": "127.0.0.1",
        "LBTRAIN_MODEL_SHA256": train["model_sha256"]})
    try:
        http.wait_answering(f"http://127.0.0.1:{port}/health", proc, log)
        assert http.get(f"http://127.0.0.1:{port}/health")[0] == 200
        status, body = http.post(f"http://127.0.0.1:{port}/predict",
                             {"instances": ["a gripping, beautifully acted film", "dull and far too long"]})
        assert status == 200, body
        predictions = json.loads(body)["predictions"]
        assert len(predictions) == 2 and all(p["label"] in classes for p in predictions)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- services -----------------------------------------------------------------------------------------

SERVICES = {
    "ingress": "services/ingress/Dockerfile",
    "launcher": "services/launcher/Dockerfile",
    "job-events": "functions/job_events/Dockerfile",
    "reconciler": "functions/reconciler/Dockerfile",
    "dashboard": "services/dashboard/Dockerfile",
}


class Services:
    def __init__(self) -> None:
        self.procs: list[Any] = []
        self.urls: dict[str, str] = {}

    def start(self, name: str, env: image_env.ImageEnv, values: dict[str, str], log: Path) -> str:
        port = free_port()
        proc = env.popen(env.command(), env={**values, "PORT": str(port)}, log=log)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        # functions-framework answers any path; the Flask services have /healthz.
        http.wait_answering(url + ("/healthz" if name in ("ingress", "launcher", "dashboard") else "/"), proc, log)
        self.urls[name] = url
        return url

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except Exception:  # noqa: BLE001 - a stuck server must not hide the test's result
                proc.kill()


def _pull_one(subscriber: Any, subscription: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 1}, timeout=10)
        if response.received_messages:
            received = response.received_messages[0]
            subscriber.acknowledge(request={"subscription": subscription, "ack_ids": [received.ack_id]})
            return received.message
    raise AssertionError(f"no message on {subscription}")


def _push_envelope(message: Any, subscription: str) -> dict[str, Any]:
    """The JSON body Pub/Sub push delivers."""
    return {"message": {"data": base64.b64encode(message.data).decode(), "attributes": dict(message.attributes),
                        "messageId": message.message_id, "publishTime": "2026-12-03T00:00:00Z"},
            "subscription": subscription, "deliveryAttempt": 1}


@pytest.mark.parametrize("dockerfile", ["services/launcher/Dockerfile", "functions/job_events/Dockerfile",
                                        "functions/reconciler/Dockerfile"])
def test_images_that_hold_a_job_backend_can_build_each(dockerfile: str,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Launchers, job-events and the reconciler route job ids to Cloud Run or Vertex: both clients load."""
    env = _env(dockerfile, tmp_path_factory)
    code = ("from lbtrain.adapters import cloudrun_client, dispatch_backend, vertex_client\n"
            "from lbtrain.config import Config\n"
            "cfg = Config(job_backend='cloudrun', cloud_run_api_endpoint='http://127.0.0.1:9')\n"
            "cloudrun_client.jobs(cfg); cloudrun_client.executions(cfg)\n"
            "from google.cloud import aiplatform\n"
            "print(type(dispatch_backend.DispatchBackend(cfg).backend('cloudrun')).__name__)")
    result = env.run([env.python, "-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("CloudRunBackend")


def test_service_images_run_the_chain(emulator_hosts: dict[str, str], gcs: str, gcs_client: Any,
                                      tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from google.cloud import pubsub_v1

    project, dep = fresh_id("proj"), fresh_id("dep")
    root = f"gs://{BUCKET}/{dep}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for spec in pubsub_bus.topology(dep, ["etl", "train", "evaluate", "deploy"]):
        publisher.create_topic(name=publisher.topic_path(project, spec.topic_id))
    etl_sub = subscriber.subscription_path(project, f"{dep}-step-etl-test")
    subscriber.create_subscription(name=etl_sub, topic=publisher.topic_path(project, f"{dep}-step-etl"))

    fake = FakeVertex()
    vertex_server = serve(fake)
    common = {"GOOGLE_CLOUD_PROJECT": project, "DEPLOYMENT_NAME": dep, "REGION": "us-central1",
              "ARTIFACT_ROOT": root, "STORAGE_EMULATOR_HOST": gcs, "API_TOKEN": TOKEN,
              "LABELBOX_WEBHOOK_SECRET": SECRET, "LABELBOX_BACKEND": "file",
              "LABELBOX_DIR": str(tmp_path / "labelbox"), "JOB_BACKEND": "vertex",
              "JOB_IMAGE": "europe-docker.pkg.dev/p/lbtrain/jobs-cpu:abc", "JOB_SERVICE_ACCOUNT": "jobs@p.iam",
              "VERTEX_API_ENDPOINT": f"http://127.0.0.1:{vertex_server.server_address[1]}",
              "PUSH_AUTH": "none", **emulator_hosts}
    envs = {name: _env(dockerfile, tmp_path_factory) for name, dockerfile in SERVICES.items()}
    services = Services()
    try:
        urls = {name: services.start(name, envs[name], {**common, **({"STAGE": "etl"} if name == "launcher"
                                                                      else {})}, tmp_path / f"{name}.log")
                for name in SERVICES}

        # ingress: a signed Model Run webhook starts a run and publishes its first step.
        api = Client(urls["ingress"], token=TOKEN, retries=0)
        mr = fresh_id("mr")
        status, answer = api.send_webhook("/model_run", {"modelId": "m1", "modelRunId": mr,
                                                         "modelType": "text_single_classification"},
                                          SECRET, delivery_id=fresh_id("d"))
        assert status in (200, 201, 202), answer
        run_id = answer["run_id"]
        step = _pull_one(subscriber, etl_sub)
        assert dict(step.attributes)["run_id"] == run_id

        # launcher (STAGE=etl): the step message as Pub/Sub pushes it → a CustomJob on the fake Vertex.
        status, body = http.post(urls["launcher"] + "/push/step/etl", _push_envelope(step, etl_sub))
        assert status == 204, body
        assert len(fake.jobs) == 1
        job_id = next(iter(fake.jobs))
        assert api.get_run(run_id)["steps"][0]["state"] == "RUNNING"

        # job-events (CloudEvent from the job-events topic): the job failed → the run fails with the reason.
        fake.set_state(job_id, "FAILED")
        entry = json.loads((Path(__file__).resolve().parents[1] / "data" / "logsink" / "ml_job_failed.json")
                           .read_text())
        entry["resource"]["labels"]["job_id"] = job_id
        event_message = {"data": base64.b64encode(json.dumps(entry).encode()).decode(), "attributes": {},
                         "messageId": fresh_id("m"), "publishTime": "2026-12-03T00:00:00Z"}
        status, body = http.post(urls["job-events"], {"message": event_message,
                                                  "subscription": f"projects/{project}/subscriptions/x"},
                             headers={"ce-specversion": "1.0", "ce-id": fresh_id("ce"),
                                      "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
                                      "ce-source": f"//pubsub.googleapis.com/projects/{project}/topics/x"})
        assert status in (200, 204), body
        run = api.get_run(run_id)
        assert run["status"] == "FAILED" and "etl" in (run.get("error") or {}).get("stage", "etl"), run

        # reconciler (HTTP, Cloud Scheduler): a sweep over this deployment answers.
        status, body = http.post(urls["reconciler"], {})
        assert status == 200, body

        # dashboard: the run's page, and the champion record read from gs://.
        storage.write_json(storage.join(root, "models", "text_single_classification", "champion.json"),
                           {"run_id": "champ-run-1", "model_uri": f"{root}/m", "metric": 0.9})
        status, page = http.get(f"{urls['dashboard']}/dashboard/runs/{run_id}")
        assert status == 200 and run_id in page
        status, page = http.get(f"{urls['dashboard']}/dashboard/models/text_single_classification")
        assert status == 200, page
        assert "champ-run-1" in page and "unreadable" not in page
    finally:
        services.stop()
        vertex_server.shutdown()
