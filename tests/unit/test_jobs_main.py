"""`python -m jobs.main` end to end in subprocesses, as the local job backend runs it:
etl → train → evaluate → deploy on a small reference model run, failures, idempotence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobs import serving
from lbtrain import datasets, storage
from tests.launcher_args import recorded_args

MT = "text_single_classification"
MR = "mr-e2e"


class Env:
    """A file-backed Labelbox + artifact root, and a way to run one job like the launcher does."""

    def __init__(self, root: Path):
        self.root = root
        self.artifacts = root / "artifacts"
        self.labelbox = root / "labelbox"

    def out(self, run_id: str, stage: str, attempt: int = 1) -> Path:
        return Path(storage.run_dir(str(self.artifacts), run_id, stage, attempt))

    def run(
        self,
        run_id: str,
        stage: str,
        *,
        attempt: int = 1,
        model_run_id: str = MR,
        upstream: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        out = self.out(run_id, stage, attempt)
        if upstream is None:
            before = {
                "etl": [],
                "train": ["etl"],
                "evaluate": ["etl", "train"],
                "deploy": ["etl", "train", "evaluate"],
            }
            upstream = {s: str(self.out(run_id, s)) for s in before[stage]}
        inputs = self.root / "inputs" / f"{run_id}-{stage}-a{attempt}.json"
        inputs.parent.mkdir(parents=True, exist_ok=True)
        inputs.write_text(
            json.dumps(
                {
                    "run_id": run_id,
                    "model_type": MT,
                    "model_run_id": model_run_id,
                    "model_id": "m",
                    "params": params or {},
                    "stage": stage,
                    "attempt": attempt,
                    "upstream": upstream,
                }
            )
        )
        child_env = {
            **os.environ,
            "ARTIFACT_ROOT": str(self.artifacts),
            "LABELBOX_BACKEND": "file",
            "LABELBOX_DIR": str(self.labelbox),
            "JOB_BACKEND": "local",
            **(env or {}),
        }
        args = [
            sys.executable,
            "-m",
            "jobs.main",
            "--run-id",
            run_id,
            "--stage",
            stage,
            "--attempt",
            str(attempt),
            "--inputs",
            str(inputs),
            "--outputs",
            str(out),
            *(extra_args if extra_args is not None else recorded_args(stage, upstream)),
        ]
        return subprocess.run(args, env=child_env, capture_output=True, text=True, timeout=120)

    def outputs(self, run_id: str, stage: str, attempt: int = 1) -> dict[str, Any]:
        return json.loads((self.out(run_id, stage, attempt) / "outputs.json").read_text())

    def error(self, run_id: str, stage: str, attempt: int = 1) -> dict[str, Any]:
        return json.loads((self.out(run_id, stage, attempt) / "error.json").read_text())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    e = Env(tmp_path_factory.mktemp("e2e"))
    datasets.build(MT, str(e.labelbox), MR, limit=300)
    yield e
    serving.stop_all(str(e.artifacts))


def _has_nested_array(value: Any, in_array: bool = False) -> bool:
    if isinstance(value, list):
        return in_array or any(_has_nested_array(v, True) for v in value)
    if isinstance(value, dict):
        return any(_has_nested_array(v) for v in value.values())
    return False


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pipeline_etl_train_evaluate_deploy(env: Env) -> None:
    for stage in ("etl", "train", "evaluate"):
        _ok(env.run("r1", stage))
        manifest = env.outputs("r1", stage)
        assert set(manifest) - {"model_sha256"} == {"run_id", "stage", "attempt", "model_type", "uris", "metrics"}
        assert ("model_sha256" in manifest) == (stage == "train")
        assert (manifest["run_id"], manifest["stage"], manifest["attempt"]) == ("r1", stage, 1)
        for uri in manifest["uris"].values():
            assert storage.exists(uri)
    assert env.outputs("r1", "etl")["metrics"]["examples"] == 300
    assert env.outputs("r1", "train")["metrics"]["train_size"] == 210
    # the train job reported its grid fits (4 values of C, then the refit) in progress.json
    progress = json.loads((env.out("r1", "train") / "progress.json").read_text())
    assert (progress["unit"], progress["done"], progress["total"], progress["metric"]) == ("fit", 5, 5, "macro_f1")
    assert [p["done"] for p in progress["history"]] == [1, 2, 3, 4, 5]
    grid = json.loads((env.out("r1", "train") / "train_metrics.json").read_text())["grid"]
    assert [p["value"] for p in progress["history"]] == [t["macro_f1"] for t in grid] + [None]
    assert "refit" in progress["note"] and progress["eta_seconds"] == 0.0
    metrics = env.outputs("r1", "evaluate")["metrics"]
    assert metrics["test_size"] == 45 and metrics["predicted_rows"] == 300
    assert 0.0 <= metrics["macro_f1"] <= 1.0 and metrics["accuracy"] > 0.45  # 3 classes, majority 0.53
    assert metrics["confusion_matrix"]["labels"] == ["fresh", "plot", "rotten"]
    assert not _has_nested_array(metrics)  # the orchestrator stores these metrics in Firestore
    uploaded = env.labelbox / "model_runs" / MR / "predictions" / "lbtrain-r1-a1.ndjson"
    assert sum(1 for _ in uploaded.open()) == metrics["uploaded_rows"] == 300 + 3 * 45

    # logs are JSON lines bound to the run, with progress
    lines = [json.loads(line) for line in env.run("r1", "etl").stdout.splitlines() if line.startswith("{")]
    assert lines and all(line["run_id"] == "r1" and line["stage"] == "etl" for line in lines)

    _ok(env.run("r1", "deploy"))
    result = env.outputs("r1", "deploy")["metrics"]
    assert result["deployed"] is True and result["reason"] == "no champion yet"
    champion = json.loads((env.artifacts / "models" / MT / "champion.json").read_text())
    assert champion["run_id"] == "r1" and champion["endpoint"] == result["endpoint"]
    reply = serving.predict(result["endpoint"], [{"text": "A gripping, beautifully made thriller."}, "Dull."])
    assert len(reply["predictions"]) == 2
    assert reply["predictions"][0]["label"] in ("fresh", "plot", "rotten")
    assert set(reply["predictions"][0]["scores"]) == {"fresh", "plot", "rotten"}

    # re-running the deploy step is a no-op while the champion serves
    _ok(env.run("r1", "deploy"))
    again = env.outputs("r1", "deploy")["metrics"]
    assert again["deployed"] is True and again["reason"] == "already the champion"
    assert again["endpoint"] == result["endpoint"]


def _fake_evaluate(env: Env, run_id: str, macro_f1: float) -> None:
    """An evaluate step that scored `macro_f1`, reusing r1's model (the gate only reads the manifest)."""
    out = env.out(run_id, "evaluate")
    out.mkdir(parents=True, exist_ok=True)
    (out / "outputs.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "stage": "evaluate",
                "attempt": 1,
                "model_type": MT,
                "uris": {},
                "metrics": {"macro_f1": macro_f1},
            }
        )
    )


def test_champion_challenger(env: Env) -> None:
    if not (env.artifacts / "models" / MT / "champion.json").exists():
        pytest.skip("needs the pipeline test's champion")
    old = json.loads((env.artifacts / "models" / MT / "champion.json").read_text())
    upstream = {"train": str(env.out("r1", "train"))}

    _fake_evaluate(env, "worse", old["value"] - 0.1)
    _ok(env.run("worse", "deploy", upstream={**upstream, "evaluate": str(env.out("worse", "evaluate"))}))
    result = env.outputs("worse", "deploy")["metrics"]
    assert result["deployed"] is False and result["champion_run_id"] == "r1" and result["endpoint"] == ""
    assert "< champion" in result["reason"]

    _fake_evaluate(env, "better", 1.0)
    _ok(env.run("better", "deploy", upstream={**upstream, "evaluate": str(env.out("better", "evaluate"))}))
    result = env.outputs("better", "deploy")["metrics"]
    assert result["deployed"] is True and result["champion_run_id"] == "better"
    assert not serving.pid_alive(old["pid"])  # the replaced champion was undeployed
    assert serving.predict(result["endpoint"], ["fine"])["predictions"]
    assert serving.stop_all(str(env.artifacts)) == 1

    # The stack restarted (servers gone): a worse challenger still does not replace the champion,
    # whose server is started again instead.
    _fake_evaluate(env, "worse2", 0.5)
    _ok(env.run("worse2", "deploy", upstream={**upstream, "evaluate": str(env.out("worse2", "evaluate"))}))
    result = env.outputs("worse2", "deploy")["metrics"]
    assert result["deployed"] is False and result["champion_run_id"] == "better"
    assert "restarted" in result["reason"]
    champion = json.loads((env.artifacts / "models" / MT / "champion.json").read_text())
    assert serving.is_alive(champion) and serving.predict(champion["endpoint"], ["fine"])["predictions"]
    assert serving.stop_all(str(env.artifacts)) == 1


def test_etl_is_idempotent(env: Env) -> None:
    _ok(env.run("idem", "etl"))
    first = (env.out("idem", "etl") / "dataset.jsonl").read_bytes()
    stats = (env.out("idem", "etl") / "stats.json").read_bytes()
    _ok(env.run("idem", "etl"))
    assert (env.out("idem", "etl") / "dataset.jsonl").read_bytes() == first
    assert (env.out("idem", "etl") / "stats.json").read_bytes() == stats


def test_failing_stage_writes_error_json(env: Env) -> None:
    proc = env.run("strict", "etl", env={"LBTRAIN_MIN_EXAMPLES": "train=5,validation=1,test=10"})
    assert proc.returncode == 1
    error = env.error("strict", "etl")
    assert error == {
        "message": 'too few examples: class "plot" has 3 in split "test" (minimum 10)',
        "type": "DatasetError",
    }
    assert not (env.out("strict", "etl") / "outputs.json").exists()
    assert (env.out("strict", "etl") / "stats.json").exists()  # still explains the data
    assert "Traceback" in proc.stderr


def test_missing_model_run(env: Env) -> None:
    proc = env.run("nomr", "etl", model_run_id="does-not-exist")
    assert proc.returncode == 1
    assert env.error("nomr", "etl") == {
        "message": "model run 'does-not-exist' not found in Labelbox",
        "type": "ModelRunNotFound",
    }


def test_missing_upstream(env: Env) -> None:
    proc = env.run("noup", "train", upstream={})
    assert proc.returncode == 1
    assert "needs the outputs of the etl stage" in env.error("noup", "train")["message"]


def test_rerun_clears_a_stale_error(env: Env) -> None:
    assert env.run("flip", "etl", env={"LBTRAIN_MIN_EXAMPLES": "test=99"}).returncode == 1
    _ok(env.run("flip", "etl"))
    assert not (env.out("flip", "etl") / "error.json").exists()
    assert (env.out("flip", "etl") / "outputs.json").exists()


def test_bad_arguments_exit_2(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.main",
            "--run-id",
            "x",
            "--stage",
            "bake",
            "--attempt",
            "1",
            "--inputs",
            str(tmp_path / "none.json"),
            "--outputs",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert json.loads((out / "error.json").read_text())["type"] == "UsageError"
    proc = env.run("mismatch", "etl", extra_args=["--attempt", "0"])
    assert proc.returncode == 2
