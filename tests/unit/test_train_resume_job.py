"""A train job killed with SIGKILL in the middle of training (a Spot preemption) and started again
as attempt 2 by `python -m jobs.main` resumes from attempt 1's checkpoint instead of starting over,
says so in its log, progress and metrics, and the model still reaches the quality bar."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from lbtrain import datasets
from tests.unit.image_fixtures import JobEnv

MT = "image_single_classification"
PARAMS = {"epochs": 10, "patience": 10, "threads": 1, "max_seconds": 600}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    e = JobEnv(tmp_path_factory.mktemp("img-resume"), MT)
    datasets.build(MT, str(e.labelbox), e.model_run_id, limit=200)
    return e


def _checkpoint_epoch(env: JobEnv) -> int:
    import torch

    path = env.out("r", "train", 1) / "checkpoints" / "last.pt"
    if not path.exists():
        return 0
    return int(torch.load(path, weights_only=True)["epoch"])


def test_killed_train_job_resumes_in_attempt_2(env: JobEnv) -> None:
    assert env.run("r", "etl", PARAMS).returncode == 0
    args, child_env = env.command("r", "train", PARAMS, attempt=1)
    proc = subprocess.Popen(args, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while _checkpoint_epoch(env) < 2:  # two epochs done and checkpointed
            assert proc.poll() is None, "attempt 1 ended before it could be killed: " + (proc.stderr.read()[-2000:])
            assert time.monotonic() < deadline, "no checkpoint of epoch 2 in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_after = _checkpoint_epoch(env)
    assert 2 <= killed_after < PARAMS["epochs"]
    assert not (env.out("r", "train", 1) / "outputs.json").exists()

    second = env.run("r", "train", PARAMS, attempt=2)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from the checkpoint of attempt 1 after epoch {killed_after}" in second.stdout
    ran = [int(line.split('"message": "epoch ')[1].split("/")[0]) for line in second.stdout.splitlines()
           if '"message": "epoch ' in line]
    assert ran and ran[0] == killed_after + 1  # only the epochs attempt 1 had not finished
    outputs = env.outputs("r", "train", 2)
    assert (outputs["metrics"]["resumed_from_attempt"], outputs["metrics"]["resumed_from_epoch"]) == (1, killed_after)
    metrics = json.loads((env.out("r", "train", 2) / "train_metrics.json").read_text())
    assert metrics["resumed_from"] == {"attempt": 1, "epoch": killed_after, "batches": 0}
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, metrics["epochs_run"] + 1))
    progress = json.loads((env.out("r", "train", 2) / "progress.json").read_text())
    assert progress["done"] == progress["total"] == metrics["epochs_run"]
    assert progress["note"] == f"resumed from attempt 1 after epoch {killed_after}"  # what the run page shows
    assert (env.out("r", "train", 2) / "checkpoints" / "last.pt").exists()

    ev = env.run("r", "evaluate", PARAMS, upstream_attempts={"train": 2})
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert env.outputs("r", "evaluate")["metrics"]["accuracy"] > 0.3  # the bar of test_image_single_jobs
