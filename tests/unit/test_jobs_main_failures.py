"""`python -m jobs.main` failing before its stage's own handler runs still leaves error.json with
the reason (Vertex only reports "exited with a non-zero status"): a bad configuration, a secret that
cannot be read, a task module that cannot be imported, storage that fails outside the handler. Exit
2 for bad arguments, inputs or configuration, 1 for everything else; when even the outputs location
is unreachable, the reason is one JSON line on stderr.

Each job is a real subprocess. Import failures are real too: a `sitecustomize` on the child's
PYTHONPATH marks a module as unimportable (`sys.modules[name] = None`), as a broken image would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain import datasets
from tests.conftest import ROOT
from tests.fakes.secret_manager import FakeSecretManager, serve

MT = "text_single_classification"
MR = "mr-fail"
SECRET = "projects/proj-1/secrets/lbtrain-labelbox-api-key"
NAME = f"{SECRET}/versions/latest"
VALUE = "lb-never-shown-4b1d5ea1c0de"


class Job:
    def __init__(self, root: Path):
        self.root = root
        self.out = root / "out"
        self.inputs = root / "inputs.json"
        self.inputs.write_text(json.dumps({"run_id": "r1", "model_type": MT, "model_run_id": MR, "model_id": "m",
                                           "stage": "etl", "attempt": 1, "params": {}, "upstream": {}}))

    def run(self, env: dict[str, str] | None = None, blocked: tuple[str, ...] = (), inputs: Path | None = None,
            outputs: Path | None = None) -> subprocess.CompletedProcess[str]:
        child = {k: v for k, v in os.environ.items() if k not in ("LABELBOX_API_KEY", "LABELBOX_API_KEY_SECRET")}
        child.update({"ARTIFACT_ROOT": str(self.root / "artifacts"), "LABELBOX_BACKEND": "file",
                      "LABELBOX_DIR": str(self.root / "lb"), "JOB_BACKEND": "local", **(env or {})})
        path = [str(ROOT)]
        if blocked:
            site = self.root / "site"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(
                "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked))
            path.insert(0, str(site))
        child["PYTHONPATH"] = os.pathsep.join(path)
        args = ["--run-id", "r1", "--stage", "etl", "--attempt", "1", "--inputs", str(inputs or self.inputs),
                "--outputs", str(outputs or self.out)]
        return subprocess.run([sys.executable, "-m", "jobs.main", *args], env=child, cwd=str(ROOT),
                              capture_output=True, text=True, timeout=120)

    def error(self) -> dict[str, Any]:
        return json.loads((self.out / "error.json").read_text())


@pytest.fixture()
def job(tmp_path: Path) -> Job:
    j = Job(tmp_path)
    datasets.build(MT, str(tmp_path / "lb"), MR, limit=40)
    j.out.mkdir()
    (j.out / "outputs.json").write_text('{"stale": true}')  # of an earlier execution of this attempt
    return j


@pytest.fixture()
def sm() -> Iterator[FakeSecretManager]:
    fake = FakeSecretManager()
    fake.add(SECRET, VALUE)
    server = serve(fake)
    yield fake
    server.shutdown()
    server.server_close()


def stderr_json(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]


def test_a_bad_config_leaves_error_json_and_exits_2(job: Job) -> None:
    proc = job.run({"LBTRAIN_MIN_EXAMPLES": "bogus=1"})
    assert proc.returncode == 2, proc.stderr
    assert job.error() == {"type": "UsageError", "message": "LBTRAIN_MIN_EXAMPLES: bad entry 'bogus=1' "
                                                            "(want e.g. train=5,validation=1,test=1)"}
    assert not (job.out / "outputs.json").exists()
    assert stderr_json(proc)[-1]["severity"] == "ERROR"


def test_a_secret_value_in_the_name_variable_is_a_config_error_that_never_shows_it(job: Job) -> None:
    proc = job.run({"LABELBOX_BACKEND": "sdk", "LABELBOX_API_KEY_SECRET": VALUE})
    assert proc.returncode == 2
    error = job.error()
    assert error["type"] == "UsageError" and error["message"].startswith("LABELBOX_API_KEY_SECRET must be a Secret")
    assert VALUE not in proc.stdout + proc.stderr + json.dumps(error)


@pytest.mark.parametrize("case", ["denied", "missing"])
def test_a_secret_that_cannot_be_read_leaves_error_json(job: Job, sm: FakeSecretManager, case: str) -> None:
    name = NAME if case == "denied" else "projects/proj-1/secrets/absent/versions/latest"
    sm.denied.add(SECRET)
    proc = job.run({"LABELBOX_BACKEND": "sdk", "LABELBOX_API_KEY_SECRET": name,
                    "SECRET_MANAGER_API_ENDPOINT": sm.base_url})
    assert proc.returncode == 1, proc.stderr
    error = job.error()
    assert error["type"] == "SecretError"
    expected = ("permission denied reading Secret Manager secret" if case == "denied"
                else "Secret Manager secret version") + f" {name}"
    assert error["message"].startswith(expected), error
    assert sm.accesses() == [name]  # 403 and 404 are not retried
    assert VALUE not in proc.stdout + proc.stderr
    assert not (job.out / "outputs.json").exists()


def test_an_image_without_the_secret_manager_client_says_so(job: Job) -> None:
    proc = job.run({"LABELBOX_BACKEND": "sdk", "LABELBOX_API_KEY_SECRET": NAME},
                   blocked=("google.cloud.secretmanager",))
    assert proc.returncode == 1
    assert job.error() == {"type": "SecretError", "message": "google-cloud-secret-manager is not installed: an image "
                                                             "that reads secrets needs lbtrain[secrets]"}


def test_a_task_module_that_cannot_be_imported_leaves_error_json(job: Job) -> None:
    proc = job.run(blocked=("jobs.tasks.text_rows",))
    assert proc.returncode == 1
    error = job.error()
    assert error["type"] == "ModuleNotFoundError" and "jobs.tasks.text_rows" in error["message"], error
    assert "Traceback" in proc.stderr  # for people; error.json keeps one line
    assert not (job.out / "outputs.json").exists()


def test_a_storage_failure_outside_the_handler_leaves_error_json(job: Job) -> None:
    folder = job.root / "inputs-dir"
    folder.mkdir()
    proc = job.run(inputs=folder)  # reading it fails with an OSError, not a missing file
    assert proc.returncode == 1
    assert job.error()["type"] == "IsADirectoryError"
    assert str(folder) in job.error()["message"]


def test_an_unreachable_outputs_location_reports_on_stderr(job: Job) -> None:
    blocker = job.root / "a-file"
    blocker.write_text("")
    proc = job.run(outputs=blocker / "out")
    assert proc.returncode == 1
    last = stderr_json(proc)[-1]
    assert last["severity"] == "ERROR" and "error.json could not be written" in last["message"]
    assert last["outputs"] == str(blocker / "out") and last["error_type"] == "NotADirectoryError"


def test_lbtrain_itself_failing_to_import_still_reports(job: Job) -> None:
    proc = job.run(blocked=("lbtrain.storage",))
    assert proc.returncode == 1
    last = stderr_json(proc)[-1]
    assert "error.json could not be written" in last["message"] and "lbtrain.storage" in last["message"]
