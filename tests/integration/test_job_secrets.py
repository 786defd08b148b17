"""Jobs read the Labelbox API key from Secret Manager at run time, at the wire: the real
google-cloud-secret-manager client (REST transport, anonymous credentials) against a local fake of
the API (tests/fakes/secret_manager.py). The launcher passes the secret's resource name, never its
value; a job run through `python -m jobs.main` with LABELBOX_BACKEND=sdk gets its key from the fake
Secret Manager and uses it against the fake Labelbox API."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbtrain import secrets
from lbtrain.config import Config, from_env, to_env
from lbtrain.secrets import SecretError
from tests.fakes.labelbox_server import FakeLabelbox
from tests.fakes.labelbox_server import serve as serve_labelbox
from tests.fakes.secret_manager import FakeSecretManager
from tests.fakes.secret_manager import serve as serve_secret_manager
from tests.launcher_args import recorded_args

SECRET = "projects/proj-1/secrets/lbtrain-labelbox-api-key"
NAME = f"{SECRET}/versions/latest"
VALUE = "lb-from-secret-manager-7c0ffee5ca1ab1e"


@pytest.fixture()
def sm() -> Iterator[FakeSecretManager]:
    fake = FakeSecretManager()
    fake.add(SECRET, VALUE + "\n")  # `echo KEY | gcloud secrets versions add` leaves a newline
    server = serve_secret_manager(fake)
    secrets.clear_cache()
    yield fake
    secrets.clear_cache()
    server.shutdown()
    server.server_close()


def sdk_config(sm: FakeSecretManager, **overrides: object) -> Config:
    values: dict[str, object] = {"labelbox_backend": "sdk", "labelbox_api_key_secret": NAME,
                                 "secret_manager_api_endpoint": sm.base_url}
    return Config(**{**values, **overrides})  # type: ignore[arg-type]


# -- reading the secret --------------------------------------------------------------------------

def test_the_key_is_read_from_secret_manager_once_per_process(sm: FakeSecretManager) -> None:
    config = sdk_config(sm)
    assert config.labelbox_api_key == ""
    resolved = secrets.resolve(config)
    assert resolved.labelbox_api_key == VALUE  # the trailing newline is not part of the key
    assert resolved.labelbox_api_key_secret == NAME and VALUE in resolved.secrets()
    assert secrets.resolve(config).labelbox_api_key == VALUE
    assert secrets.labelbox_api_key(config) == VALUE
    assert sm.accesses() == [NAME]  # one access call for the job's life
    ((method, path, headers),) = sm.requests
    assert (method, path) == ("GET", f"/v1/{NAME}:access")
    assert "authorization" not in headers  # anonymous credentials: only loopback is contacted


def test_a_secret_name_without_version_means_the_latest_one(sm: FakeSecretManager) -> None:
    sm.add(SECRET, "lb-rotated-key-0000000000")
    config = from_env({"LABELBOX_BACKEND": "sdk", "LABELBOX_API_KEY_SECRET": SECRET,
                       "SECRET_MANAGER_API_ENDPOINT": sm.base_url})
    assert config.labelbox_api_key_secret == NAME
    assert from_env(to_env(config)) == config
    assert secrets.resolve(config).labelbox_api_key == "lb-rotated-key-0000000000"
    assert secrets.access(f"{SECRET}/versions/1", endpoint=sm.base_url) == VALUE


def test_transient_failures_are_retried(sm: FakeSecretManager) -> None:
    sm.fail_next = [503, 429]
    assert secrets.access(NAME, endpoint=sm.base_url, initial_backoff=0.01) == VALUE
    assert sm.accesses() == [NAME] * 3


def test_failures_that_outlast_the_retries_name_the_secret(sm: FakeSecretManager) -> None:
    sm.fail_next = [503] * 100
    with pytest.raises(SecretError, match="failed for") as err:
        secrets.access(NAME, endpoint=sm.base_url, deadline=0.5, initial_backoff=0.01)
    assert NAME in str(err.value) and "ServiceUnavailable" in str(err.value)
    assert 1 < len(sm.accesses()) < 100


def test_a_missing_secret_is_a_clear_error_naming_the_resource(sm: FakeSecretManager) -> None:
    missing = "projects/proj-1/secrets/nope/versions/latest"
    with pytest.raises(SecretError) as err:
        secrets.resolve(sdk_config(sm, labelbox_api_key_secret=missing))
    assert str(err.value).startswith(f"Secret Manager secret version {missing} does not exist")
    with pytest.raises(SecretError, match="versions/7 does not exist"):
        secrets.access(f"{SECRET}/versions/7", endpoint=sm.base_url)
    assert sm.accesses() == [missing, f"{SECRET}/versions/7"]  # a 404 is not retried


def test_a_denied_secret_says_which_role_is_missing(sm: FakeSecretManager) -> None:
    sm.denied.add(SECRET)
    with pytest.raises(SecretError) as err:
        secrets.resolve(sdk_config(sm))
    assert str(err.value) == (f"permission denied reading Secret Manager secret {NAME}: the job's service "
                              "account needs roles/secretmanager.secretAccessor on it")
    assert VALUE not in str(err.value)


def test_a_corrupted_payload_fails_its_checksum(sm: FakeSecretManager) -> None:
    sm.corrupt = True
    with pytest.raises(SecretError, match="CRC32C"):
        secrets.access(NAME, endpoint=sm.base_url)
    sm.corrupt = False
    assert secrets.access(NAME, endpoint=sm.base_url) == VALUE  # a failure is not cached


def test_without_a_secret_name_the_environment_value_is_used(sm: FakeSecretManager) -> None:
    local = Config(labelbox_backend="sdk", labelbox_api_key="lb-local-dev-key")
    assert secrets.resolve(local) is local and secrets.labelbox_api_key(local) == "lb-local-dev-key"
    file_backend = sdk_config(sm, labelbox_backend="file")
    assert secrets.resolve(file_backend) is file_backend  # the file backend needs no key
    assert sm.requests == []


def test_a_value_in_the_name_variable_is_refused_without_repeating_it() -> None:
    with pytest.raises(ValueError, match="LABELBOX_API_KEY_SECRET must be a Secret Manager resource name") as err:
        from_env({"LABELBOX_API_KEY_SECRET": VALUE})
    assert VALUE not in str(err.value)
    with pytest.raises(SecretError) as err2:
        secrets.access(VALUE)
    assert VALUE not in str(err2.value)


def test_the_value_never_reaches_a_log_line(sm: FakeSecretManager, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # lbtrain.log.setup (run by other tests in this process) quiets these to WARNING: all on, for this test.
    for name in ("urllib3", "google"):
        caplog.set_level(logging.DEBUG, logger=name)
    sm.fail_next = [503]
    assert secrets.access(NAME, endpoint=sm.base_url, initial_backoff=0.01) == VALUE
    sm.denied.add(SECRET)
    secrets.clear_cache()
    with pytest.raises(SecretError):
        secrets.access(NAME, endpoint=sm.base_url)
    assert any(":access" in r.getMessage() and " 503 " in r.getMessage() for r in caplog.records)  # DEBUG is on
    forms = (VALUE, base64.b64encode(VALUE.encode()).decode(), base64.b64encode(f"{VALUE}\n".encode()).decode())
    assert not [r for r in caplog.records for form in forms if form in r.getMessage() or form in str(r.__dict__)]


# -- the launcher passes the name, never the value ----------------------------------------------

def test_the_vertex_launcher_passes_the_secret_name_not_its_value(vertex) -> None:  # noqa: ANN001
    from lbtrain.adapters.backend import JobSpec
    from lbtrain.adapters.vertex_backend import VertexBackend

    fake, endpoint = vertex
    launcher = Config(project="proj-1", region="europe-west4", deployment_name="prod",
                      artifact_root="gs://bkt/lbtrain", job_image="europe-docker.pkg.dev/proj-1/lbtrain/jobs-cpu:abc",
                      vertex_api_endpoint=endpoint, labelbox_backend="sdk", labelbox_api_key=VALUE,
                      labelbox_api_key_secret=NAME, labelbox_endpoint="https://lb.example/graphql")
    VertexBackend(launcher).submit(JobSpec(
        name="prod-r1-etl-a1", run_id="r1", stage="etl", attempt=1, model_type="text_single_classification",
        inputs_uri="gs://bkt/lbtrain/runs/r1/inputs/etl-a1.json", outputs_uri="gs://bkt/lbtrain/runs/r1/etl/a1"))
    container = fake.created()[0]["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LABELBOX_API_KEY_SECRET"] == NAME and env["LABELBOX_BACKEND"] == "sdk"
    assert env["LABELBOX_ENDPOINT"] == "https://lb.example/graphql"
    assert "LABELBOX_API_KEY" not in env
    assert VALUE not in json.dumps(fake.requests)
    job = from_env(env)  # what the job reads: the name, to fetch the value itself
    assert job.labelbox_api_key == "" and job.labelbox_api_key_secret == NAME


# -- a job through jobs.main ---------------------------------------------------------------------

@pytest.fixture()
def labelbox() -> Iterator[FakeLabelbox]:
    fake = FakeLabelbox()
    server = serve_labelbox(fake)
    yield fake
    server.shutdown()
    server.server_close()


def test_jobs_get_the_key_from_secret_manager(sm: FakeSecretManager, labelbox: FakeLabelbox,
                                              tmp_path: Path) -> None:
    """etl → train → evaluate as Vertex runs them: no LABELBOX_API_KEY in the job's environment, only
    the secret's name; each job reads the key once and exports / uploads with it."""
    from lbtrain import datasets, storage

    mt, mr, run_id = "text_single_classification", "mr-secret", "r-secret"
    datasets.build(mt, str(tmp_path / "lb"), mr, limit=60)
    export = tmp_path / "lb" / "model_runs" / mr / "export.ndjson"
    labelbox.add_model_run(mr, [json.loads(line) for line in export.read_text(encoding="utf-8").split("\n")
                                if line.strip()])
    artifacts = str(tmp_path / "artifacts")
    env = {k: v for k, v in os.environ.items() if k not in ("LABELBOX_API_KEY", "LABELBOX_WEBHOOK_SECRET")}
    env.update({"LABELBOX_BACKEND": "sdk", "LABELBOX_ENDPOINT": f"{labelbox.base_url}/graphql",
                "LABELBOX_API_KEY_SECRET": NAME, "SECRET_MANAGER_API_ENDPOINT": sm.base_url,
                "ARTIFACT_ROOT": artifacts, "JOB_BACKEND": "local",
                "LBTRAIN_MIN_EXAMPLES": "train=2,validation=1,test=1"})
    outs: dict[str, str] = {}
    for stage in ("etl", "train", "evaluate"):
        out = storage.run_dir(artifacts, run_id, stage, 1)
        inputs = tmp_path / f"{stage}.json"
        inputs.write_text(json.dumps({"run_id": run_id, "model_type": mt, "model_run_id": mr, "model_id": "m",
                                      "stage": stage, "attempt": 1, "params": {}, "upstream": dict(outs)}))
        args = ["--run-id", run_id, "--stage", stage, "--attempt", "1", "--inputs", str(inputs), "--outputs", out]
        args += recorded_args(stage, outs)
        proc = subprocess.run([sys.executable, "-m", "jobs.main", *args], env=env, capture_output=True,
                              text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert VALUE not in proc.stdout + proc.stderr and VALUE not in " ".join(args)
        outs[stage] = out
    assert sm.accesses() == [NAME] * 3  # once per job
    assert {r.headers["authorization"] for r in labelbox.requests if r.query} == {f"Bearer {VALUE}"}
    assert labelbox.exports and len(labelbox.uploads) == 1
    for out in outs.values():
        assert VALUE not in "".join(p.read_text(errors="replace") for p in Path(out).rglob("*.json"))
