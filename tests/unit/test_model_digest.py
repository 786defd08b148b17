"""A pickled model is loaded only when its file still has the SHA-256 its train step recorded.

The artifact bucket is writable by every job, including those that parse untrusted media; a model
file replaced after training must not run its code in evaluate, deploy or the serving container.
The replacement here is a real malicious pickle: loading it would create `marker`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from jobs import serving
from jobs.tasks import base
from jobs.tasks.base import ModelError
from lbtrain import datasets
from tests.unit.test_jobs_main import MR, MT, Env


class Evil:
    """Unpickling this calls os.mkdir(marker): proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Env:
    env = Env(tmp_path_factory.mktemp("digest"))
    datasets.build(MT, str(env.labelbox), MR, limit=120)
    for stage in ("etl", "train"):
        proc = env.run("r1", stage)
        assert proc.returncode == 0, proc.stderr[-2000:]
    yield env
    serving.stop_all(str(env.artifacts))


def _model_dir(env: Env) -> Path:
    return env.out("r1", "train") / "model"


def _tampered_copy(env: Env, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the trained model dir whose model.joblib is the malicious pickle; and the marker."""
    import joblib

    copy = tmp_path / "model"
    shutil.copytree(_model_dir(env), copy)
    marker = tmp_path / "code-ran"
    joblib.dump(Evil(marker), copy / "model.joblib")
    return copy, marker


def test_train_records_the_model_files_digest(trained: Env) -> None:
    recorded = trained.outputs("r1", "train")["model_sha256"]
    on_disk = hashlib.sha256((_model_dir(trained) / "model.joblib").read_bytes()).hexdigest()
    assert recorded == on_disk == base.model_digest(str(_model_dir(trained)))


def test_the_recorded_file_loads(trained: Env) -> None:
    from jobs import tasks

    sha = trained.outputs("r1", "train")["model_sha256"]
    predictor = tasks.load(MT).load_predictor(str(_model_dir(trained)), sha)
    assert predictor.predict(predictor.parse_instances([{"text": "a fine film"}]))


def test_a_replaced_pickle_is_refused_before_it_runs(trained: Env, tmp_path: Path) -> None:
    from jobs import tasks

    copy, marker = _tampered_copy(trained, tmp_path)
    sha = trained.outputs("r1", "train")["model_sha256"]
    with pytest.raises(ModelError, match="differs from the .* its train step recorded"):
        tasks.load(MT).load_predictor(str(copy), sha)
    with pytest.raises(ModelError, match="no SHA-256 recorded by its train step was given"):
        tasks.load(MT).load_predictor(str(copy))
    with pytest.raises(ModelError, match="not 64 hex digits"):
        tasks.load(MT).load_predictor(str(copy), "abc")
    assert not marker.exists()
    # the control: the same file does run code when loaded unchecked (the test can fail)
    import joblib

    joblib.load(copy / "model.joblib")
    assert marker.exists()


def test_evaluate_job_refuses_a_replaced_model(trained: Env, tmp_path: Path) -> None:
    copy, marker = _tampered_copy(trained, tmp_path)
    upstream = {"etl": str(trained.out("r1", "etl")), "train": str(trained.out("r1", "train"))}
    sha = trained.outputs("r1", "train")["model_sha256"]
    model = _model_dir(trained) / "model.joblib"
    original = model.read_bytes()
    try:
        shutil.copy(copy / "model.joblib", model)
        proc = trained.run("tampered", "evaluate", upstream=upstream, extra_args=["--model-sha256", sha])
        assert proc.returncode == 1
        assert "differs from the" in trained.error("tampered", "evaluate")["message"]
        proc = trained.run("unrecorded", "evaluate", upstream=upstream, extra_args=[])
        assert proc.returncode == 1
        assert "no SHA-256 recorded" in trained.error("unrecorded", "evaluate")["message"]
        assert not marker.exists()
    finally:
        model.write_bytes(original)
    proc = trained.run("badarg", "evaluate", upstream=upstream, extra_args=["--model-sha256", "../x"])
    assert proc.returncode == 2
    assert "--model-sha256" in trained.error("badarg", "evaluate")["message"]


def test_serving_refuses_a_replaced_model(trained: Env, tmp_path: Path) -> None:
    copy, marker = _tampered_copy(trained, tmp_path)
    sha = trained.outputs("r1", "train")["model_sha256"]
    root = str(tmp_path / "artifacts")
    with pytest.raises(serving.ServingError, match="differs from the"):
        serving.start(str(copy), root, MT, "tampered", sha256=sha, timeout=30)
    assert not marker.exists()
    record = serving.start(str(_model_dir(trained)), root, MT, "good", sha256=sha, timeout=60)
    try:
        assert record["model_sha256"] == sha and serving.healthy(record["health_url"])
    finally:
        serving.stop_all(root)
